"""Synthetic non-contrast head CT with the five hemorrhage subtypes, written as real DICOM.

The generator lives in ml.phantoms (anatomy, lesions, mimics, scanner, render, the polar style,
DICOM); this module keeps the names the rest of the project imports.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ml.phantoms.dicom import STYLES, TRANSFER_SYNTAXES, PhantomSeries, write_dataset, write_series
from ml.phantoms.domain import CLASSIC_FOV_MM, Domain
from ml.phantoms.render import MIN_LESION_MM2, SLICE_THICKNESS_MM

FIELD_OF_VIEW_MM = CLASSIC_FOV_MM

__all__ = [
    "FIELD_OF_VIEW_MM", "MIN_LESION_MM2", "SLICE_THICKNESS_MM", "STYLES", "TRANSFER_SYNTAXES",
    "Domain", "PhantomSeries", "make_volume", "write_dataset", "write_series",
]  # fmt: skip


def make_volume(
    rng: np.random.Generator, *, slices: int = 32, size: int = 512, subtypes: Sequence[str] = (),
    style: str = "classic",
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """A random head: (HU int16 (slices, size, size), labels uint8 (slices, 6) in LABELS order).

    `subtypes` names the lesions to place (none: a normal head). Slices run inferior to superior
    from the skull base to the vertex. `style` is one of STYLES ("classic": pixels are
    FIELD_OF_VIEW_MM / size wide).
    """
    if style not in STYLES:
        raise ValueError(f"style: unknown {style!r}; known: {', '.join(STYLES)}")
    volume = STYLES[style](rng, slices, size, subtypes)
    return volume.hu, volume.labels
