"""Nuisance parameters of one phantom series: what a scanner, a protocol and a patient change
without changing the diagnosis.

`Domain.classic()` is the fixed look the project's phantoms always had. `Domain.draw(rng)` is
domain randomization (the idea behind SynthSeg, Billot et al. 2023): every parameter from a range
wider than real scanners show, so that a model trained on the phantoms can only rely on what
does not vary, the blood. Ranges are from general knowledge of non-contrast head CT; they are
deliberately generous.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

CLASSIC_FOV_MM = 230.4  # 0.45 mm pixels at 512
# A varied slice is labelled only where its blood shows: at least this many HU from what it
# replaced (an isodense subdural over the cortex is not a finding a reader can make on that slice).
VISIBLE_HU = 8.0
MIMICS = ("choroid_plexus", "pineal", "falx", "dense_sinus", "basal_ganglia", "metal",
          "scalp_hematoma", "dense_falx")


@dataclass(frozen=True)
class Domain:
    """One series' nuisance parameters; `classic()` leaves the anatomy draw as it always was."""

    fov_mm: float = CLASSIC_FOV_MM  # reconstruction field of view: pixel size = fov / matrix
    head_scale: float = 1.0  # multiplies the head's semi-axes
    aspect: float = 1.0  # left-right against anterior-posterior
    offset_mm: tuple[float, float] = (0.0, 0.0)  # added to the head's position
    turn_deg: float = 0.0  # added to the head's in-plane rotation
    tilt_deg: float = 0.0  # gantry tilt / head flexion: the slice plane's slope along AP
    zeta_range: tuple[float, float] = (-0.5, 0.9)  # scanned span, fractions of the vertical axis
    skull_scale: float = 1.0  # multiplies the skull's thickness
    table_hu: float | None = None  # cortical bone; None: the anatomy's own draw
    diploe_hu: float | None = None
    tissue_hu: tuple[float, float, float] | None = None  # gray, white, CSF; None: anatomy's
    texture_hu: float = 0.0  # amplitude of a smooth parenchymal texture
    bias_hu: float = 0.0  # amplitude of a low-frequency field over the head (cupping, drift)
    hu_offset: float = 0.0  # calibration offset of the whole image (water not at 0)
    noise_hu: tuple[float, float] = (3.0, 6.0)  # noise standard deviation range
    noise_passes: int = 1  # [1 2 1] passes over the noise: 0 sharp kernel .. 3 smooth
    blur_passes: int = 1  # [1 2 1] passes over the image: in-plane resolution
    partial_volume: int = 1  # sub-levels averaged per slice (slice thickness)
    streaks_hu: float = 0.0  # beam hardening between the petrous bones (Hounsfield bar)
    blood_hu: tuple[float, float] | None = None  # None: each lesion type's own range
    mixed_clot: float = 0.0  # probability that a clot is mixed-density (hyperacute swirl)
    subdural_ages: float = 0.0  # probability that a subdural is subacute, chronic or settled
    patchy: float = 0.0  # probability that subarachnoid or intraventricular blood is in patches
    spread: float = 0.0  # probability that a subarachnoid (subdural) bleed reaches the falx
    visible_hu: float = 0.0  # a blood pixel counts for its label if it changes the slice by this
    mimics: tuple[str, ...] = ()  # bright structures that are not blood, see MIMICS
    skull_base: bool = False  # fossae, bone, sinuses and orbits (ml.phantoms.skull_base)

    @classmethod
    def classic(cls) -> Domain:
        return cls()

    @classmethod
    def draw(cls, rng: np.random.Generator, *, varied: bool = False) -> Domain:
        """A random domain; every parameter comes from `rng` in a fixed order. `varied` adds
        what the "varied" style draws beyond the randomized one (aged subdurals, patches,
        spread along the falx, labels by what shows, a dense falx, scalp hematomas) and
        leaves the randomized style's draws as they were."""
        white = rng.uniform(18, 34)
        start, stop = rng.uniform(-0.8, -0.35), rng.uniform(0.72, 0.97)
        sharp = rng.uniform() < 0.35
        domain = cls(
            fov_mm=rng.uniform(180, 300),
            head_scale=rng.uniform(0.82, 1.15),
            aspect=rng.uniform(0.88, 1.12),
            offset_mm=(rng.uniform(-28, 28), rng.uniform(-28, 28)),
            turn_deg=rng.uniform(-25, 25),
            tilt_deg=rng.uniform(-20, 20),
            zeta_range=(start, stop),
            skull_scale=rng.uniform(0.5, 1.8),
            table_hu=rng.uniform(800, 2000),
            diploe_hu=rng.uniform(250, 1000),
            tissue_hu=(white + rng.uniform(3, 15), white, rng.uniform(-4, 15)),
            texture_hu=rng.uniform(0, 6),
            bias_hu=rng.uniform(0, 12),
            hu_offset=rng.uniform(-8, 8),
            noise_hu=(2.0, 16.0),
            noise_passes=0 if sharp else int(rng.integers(1, 4)),
            blur_passes=int(rng.integers(0, 4)),
            partial_volume=int(rng.integers(1, 3)),
            streaks_hu=rng.uniform(0, 60) if rng.uniform() < 0.7 else 0.0,
            blood_hu=(40.0, 100.0),
            mixed_clot=0.3,
            mimics=tuple(name for name, p in _MIMIC_RATES.items() if rng.uniform() < p),
            skull_base=True,
        )
        if not varied:
            return domain
        return dataclasses.replace(
            domain, subdural_ages=0.45, patchy=0.6, spread=0.2, visible_hu=VISIBLE_HU,
            mimics=domain.mimics + tuple(name for name, p in _VARIED_MIMIC_RATES.items()
                                         if rng.uniform() < p),
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_MIMIC_RATES = {  # how often each appears in a randomized series
    "choroid_plexus": 0.6,
    "pineal": 0.5,
    "falx": 0.4,
    "dense_sinus": 0.6,
    "basal_ganglia": 0.2,
    "metal": 0.12,
}
_VARIED_MIMIC_RATES = {"scalp_hematoma": 0.2, "dense_falx": 0.75}  # and in the varied style
