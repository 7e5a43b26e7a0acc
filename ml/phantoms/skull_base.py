"""The floor of the cranial cavity: three fossae at three depths, and what lies under them.

Non-contrast head CT starts below the skull base, and its lowest slices are where the
classic anatomy (an ellipsoid cavity that only flattens) is least like a head and where
models trained on it raise false alarms: the brain there is a few islands (temporal lobes,
cerebellum, brain stem) among dense bone, air sinuses, orbits and mastoid cells, and the
slab average of bone and brain at a fossa floor gives blood-like values (60-100 HU) with no
blood. The anatomy (general knowledge of the skull base, PS-free):

- the anterior fossa (frontal lobes) ends at the orbital roofs, highest; below it lie the
  orbits (globe, fat, optic nerve), the ethmoid cells between them and the frontal sinus;
- the middle fossa (temporal lobes, laterally) goes deeper, with the sella and the sphenoid
  sinus in the midline under it;
- the posterior fossa (cerebellum, brain stem) is deepest, behind the petrous ridges, with
  the mastoid air cells lateral to it and the clivus in front of the brain stem.

`draw` makes one head's skull base (depths and densities); `apply` cuts a slice of the
classic anatomy down to the fossae that reach its level, in place. Only randomized domains
use it: the classic phantoms stay as they were.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ml.phantoms.anatomy import Head, Slice


@dataclass(frozen=True)
class SkullBase:
    """Depths as fractions of the head's vertical semi-axis (zeta); densities in HU."""

    anterior_floor: float  # orbital roofs
    middle_floor: float
    posterior_floor: float  # above the foramen magnum
    bone_hu: float
    air_cells: np.ndarray  # (rows, cols) over the head box: where pneumatized bone is air
    globe_hu: float
    fat_hu: float
    clivus_half_width: float  # mm
    soft_hu: float  # muscle and mucosa under the anterior fossa


def draw(rng: np.random.Generator, head_shape: tuple[int, int], bone_hu: float,
         pixel_mm: float) -> SkullBase:
    """One head's skull base; `head_shape` is the head box's (rows, cols)."""
    anterior = rng.uniform(-0.32, -0.18)
    middle = anterior - rng.uniform(0.15, 0.3)
    posterior = middle - rng.uniform(0.12, 0.25)
    cells = rng.uniform(-1, 1, size=head_shape).astype(np.float32)
    for _ in range(max(1, round(1.5 / pixel_mm))):  # cells of a few mm
        cells = (cells + np.roll(cells, 1, 0) + np.roll(cells, 1, 1)
                 + np.roll(cells, -1, 0) + np.roll(cells, -1, 1)) * np.float32(0.2)
    threshold = np.quantile(cells, rng.uniform(0.45, 0.7))
    return SkullBase(
        anterior_floor=anterior, middle_floor=middle, posterior_floor=posterior,
        bone_hu=bone_hu * rng.uniform(0.55, 0.9), air_cells=cells > threshold,
        globe_hu=rng.uniform(0, 20), fat_hu=rng.uniform(-110, -60),
        clivus_half_width=rng.uniform(5, 9), soft_hu=rng.uniform(20, 55),
    )


def _regions(head: Head) -> dict[str, np.ndarray]:
    """In-plane regions over the head box (masks), from the head's own coordinates."""
    un, vn, au = head.un, head.vn, np.abs(head.un)
    petrous_line = 0.05 + 0.4 * (au - 0.2)  # the ridge: further back laterally
    return {
        "anterior": vn < -0.3 - 0.15 * au,
        "middle": (vn >= -0.3 - 0.15 * au) & (vn < petrous_line) & (au > 0.22),
        "central": (vn >= -0.3) & (vn < petrous_line) & (au <= 0.22),  # sella, sphenoid
        "posterior": vn >= petrous_line,
        "cerebellum": (un / 0.62) ** 2 + ((vn - 0.45) / 0.5) ** 2 < 1,
        "stem": (un / 0.14) ** 2 + ((vn - 0.12) / 0.12) ** 2 < 1,
        "orbits": ((au - 0.36) / 0.2) ** 2 + ((vn + 0.8) / 0.22) ** 2 < 1,
        "ethmoid": (au < 0.14) & (vn < -0.45),
        "sphenoid": (au < 0.18) & (vn >= -0.45) & (vn < -0.1),
        "mastoid": (au > 0.62) & (vn > 0.1) & (vn < 0.5),
    }


def apply(head: Head, sl: Slice, base: SkullBase) -> None:
    """Cut `sl` (in place) down to the fossae that reach its level; fill the rest of the
    cranial cavity with skull base: bone, air cells, orbits."""
    zeta = sl.zeta
    if zeta >= base.anterior_floor:
        return
    regions = _regions(head)
    keep = np.zeros_like(sl.cavity)
    if zeta >= base.middle_floor:
        keep |= regions["middle"]
    if zeta >= base.posterior_floor:
        # the cerebellum narrows to the foramen magnum; the stem stays in the midline
        narrowing = (zeta - base.posterior_floor) / max(base.middle_floor - base.posterior_floor,
                                                        1e-3)
        shrink = np.float32(np.sqrt(np.clip(narrowing, 0.15, 1.0)))
        cerebellum = ((head.un / (0.62 * shrink)) ** 2
                      + ((head.vn - 0.45) / (0.5 * shrink)) ** 2 < 1)
        keep |= regions["posterior"] & (cerebellum | regions["stem"])
    floor = sl.cavity & ~keep
    hu = sl.hu
    hu[floor] = base.bone_hu
    # under the anterior fossa: the face's soft tissue (muscle, nasal mucosa), not solid bone;
    # a band of bone just under each floor (the slab average there is partly bone)
    face = floor & regions["anterior"] & (zeta < base.anterior_floor - 0.04)
    hu[face] = base.soft_hu
    air = floor & base.air_cells & (regions["mastoid"] | regions["ethmoid"])
    hu[air] = -900.0
    if zeta < base.middle_floor + 0.1:
        hu[floor & regions["sphenoid"]] = -900.0
        clivus = floor & regions["central"] & (np.abs(head.u) < base.clivus_half_width)
        hu[clivus] = base.bone_hu
    if zeta < base.anterior_floor - 0.05:
        orbit = floor & regions["orbits"]
        hu[orbit] = base.fat_hu
        globe = orbit & (((np.abs(head.un) - 0.36) / 0.13) ** 2
                         + ((head.vn + 0.85) / 0.14) ** 2 < 1)
        hu[globe] = base.globe_hu
    sl.cavity &= keep
    sl.depth = np.where(keep, sl.depth, np.minimum(sl.depth, 0)).astype(sl.depth.dtype)
    for name in ("sulci", "ventricles", "cisterns"):
        setattr(sl, name, getattr(sl, name) & keep)
