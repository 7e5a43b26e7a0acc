"""Which series the triage model reads: a configurable rule set over a series' instances.

A series is judged as a whole here; the images inside it are judged by `ml.volume` when the
worker assembles the volume. So a series with a localizer, a reformat or a repeat among its
axial slices is triaged (the others are left out and said); a series none of whose image
types can be read as an original axial stack is not.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pydicom.uid import UID

from ml.volume import Exclusion, image_type_exclusion

CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")
ENHANCED_CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2.1")
LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2.2")


@dataclass(frozen=True)
class SeriesFacts:
    """What the index knows about a series, enough to decide eligibility."""

    modality: str
    body_part: str
    sop_classes: frozenset[str]
    image_types: frozenset[str]  # ImageType values as stored, e.g. "ORIGINAL\\PRIMARY\\AXIAL"
    slices: int  # instances, or frames for multi-frame objects


@dataclass(frozen=True)
class EligibilityRules:
    modalities: frozenset[str] = frozenset({"CT"})
    sop_classes: frozenset[str] = frozenset({CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE,
                                             LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE})
    body_parts: frozenset[str] = frozenset({"HEAD", "BRAIN", "SKULL", ""})
    min_slices: int = 8

    def __post_init__(self) -> None:
        if self.min_slices < 1:
            raise ValueError(f"min_slices must be >= 1, got {self.min_slices}")

    @classmethod
    def create(cls, *, min_slices: int, body_parts: Iterable[str]) -> EligibilityRules:
        return cls(min_slices=min_slices, body_parts=frozenset(p.upper() for p in body_parts))

    def reason_to_skip(self, facts: SeriesFacts) -> str | None:
        """None when the series is triaged, else why not (kept on the series row)."""
        if facts.modality.upper() not in self.modalities:
            return f"modality {facts.modality or '(none)'} is not {'/'.join(sorted(self.modalities))}"
        other = facts.sop_classes - self.sop_classes
        if other or not facts.sop_classes:
            return f"SOP class {', '.join(sorted(other)) or '(none)'} is not a CT image"
        if facts.body_part.upper() not in self.body_parts:
            return f"body part {facts.body_part} is not a head"
        if (reason := _image_types_reason(facts.image_types)) is not None:
            return reason
        if facts.slices < self.min_slices:
            return f"{facts.slices} slice(s), fewer than {self.min_slices}"
        return None


def _image_types_reason(image_types: frozenset[str]) -> str | None:
    """Why no image type of the series can be triaged, or None when one can."""
    verdicts = {t: image_type_exclusion(t.split("\\")) for t in image_types}
    if not verdicts or any(v is None for v in verdicts.values()):
        return None
    if all(v == Exclusion.LOCALIZER for v in verdicts.values()):
        return "localizer (scout) images only"
    return f"image type {', '.join(sorted(verdicts))} is not ORIGINAL axial"
