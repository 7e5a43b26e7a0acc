"""Mimics: bright structures of a normal head that are not hemorrhage.

Calcified choroid plexus, pineal gland, falx and basal ganglia, a dense falx, dense
(hyperattenuating) dural venous sinuses, metal on the scalp and blood under it (a scalp
hematoma). A model trained without them in its negatives learns "bright = bleed"; with them it
has to learn where and how blood lies. Mimics are drawn before lesions and never labelled.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ml.phantoms.anatomy import Head, Slice


@dataclass(frozen=True)
class Mimic:
    name: str
    hu: float
    shape: Callable[[Slice], np.ndarray | None]


def _in_band(value: float, low: float, high: float) -> bool:
    return low < value < high


def _spots(head: Head, centres: list[tuple[float, float]], radius: float) -> np.ndarray:
    mask = np.zeros(head.u.shape, dtype=bool)
    for u0, v0 in centres:
        mask |= np.hypot(head.u - np.float32(u0), head.v - np.float32(v0)) < radius
    return mask


def _choroid_plexus(rng: np.random.Generator, head: Head) -> Mimic:
    """Glomus calcifications in the atria of both lateral ventricles, often asymmetric."""
    radius, z0, zh = rng.uniform(1.5, 4.5), rng.uniform(0.2, 0.35) * head.c, rng.uniform(4, 9)
    sides = [1, -1] if rng.uniform() < 0.8 else [int(rng.choice([1, -1]))]
    centres = [(side * rng.uniform(0.1, 0.17) * head.a, rng.uniform(0.25, 0.35) * head.b)
               for side in sides]  # fmt: skip
    spots = _spots(head, centres, radius)

    def shape(sl: Slice) -> np.ndarray | None:
        return sl.cavity & spots if abs(sl.z - z0) < zh else None

    return Mimic("choroid_plexus", rng.uniform(90, 300), shape)


def _pineal(rng: np.random.Generator, head: Head) -> Mimic:
    radius, z0 = rng.uniform(1.5, 4.0), rng.uniform(0.0, 0.1) * head.c
    spot = _spots(head, [(0.0, rng.uniform(0.12, 0.2) * head.b)], radius)

    def shape(sl: Slice) -> np.ndarray | None:
        return sl.cavity & spot if abs(sl.z - z0) < radius + 2 else None

    return Mimic("pineal", rng.uniform(100, 450), shape)


def _falx(rng: np.random.Generator, head: Head) -> Mimic:
    """Plaques of calcification in the midline falx, high in the head."""
    v0, length = rng.uniform(-0.6, 0.3) * head.b, rng.uniform(8, 30)
    z0, zh, half = rng.uniform(0.35, 0.8) * head.c, rng.uniform(5, 15), rng.uniform(0.6, 1.6)
    plaque = (np.abs(head.u) < half) & (head.v > v0) & (head.v < v0 + length)

    def shape(sl: Slice) -> np.ndarray | None:
        return sl.cavity & plaque if abs(sl.z - z0) < zh else None

    return Mimic("falx", rng.uniform(150, 900), shape)


def _dense_sinus(rng: np.random.Generator, head: Head) -> Mimic:
    """Hyperattenuating superior sagittal and transverse sinuses (high hematocrit): blood
    density, against the inner table, but in the sinus and not a bleed."""
    width, deep = rng.uniform(3, 6), rng.uniform(3, 7)
    posterior = head.v > 0

    def shape(sl: Slice) -> np.ndarray | None:
        rim = sl.cavity & (sl.depth < deep) & posterior
        if sl.zeta > 0.05:  # the superior sagittal sinus: a triangle in the midline behind
            return rim & (np.abs(head.u) < width * (1 - sl.depth / deep)) & (head.vn > 0.4)
        if _in_band(sl.zeta, -0.4, -0.1):  # the transverse sinuses along the occipital bone
            return rim & (sl.depth < deep * 0.6) & (head.vn > 0.5)
        return None

    return Mimic("dense_sinus", rng.uniform(50, 80), shape)


def _basal_ganglia(rng: np.random.Generator, head: Head) -> Mimic:
    radius, z0, zh = rng.uniform(2.5, 6), rng.uniform(0.05, 0.18) * head.c, rng.uniform(4, 10)
    u0, v0 = rng.uniform(0.14, 0.2) * head.a, rng.uniform(-0.05, 0.05) * head.b
    spots = _spots(head, [(u0, v0), (-u0, v0)], radius)

    def shape(sl: Slice) -> np.ndarray | None:
        return sl.cavity & spots if abs(sl.z - z0) < zh else None

    return Mimic("basal_ganglia", rng.uniform(90, 350), shape)


def _metal(rng: np.random.Generator, head: Head) -> Mimic:
    """A clip or electrode on the scalp (its streaks come from ml.phantoms.scanner)."""
    angle, z0 = rng.uniform(0, 2 * np.pi), rng.uniform(-0.2, 0.7) * head.c
    reach = head.shells[0] - 1.5  # just under the skin surface
    theta = np.arctan2(head.vn, head.un)
    spot = (np.abs(np.angle(np.exp(1j * (theta - angle)))) < 0.04) & (np.abs(head.r - reach) < 2.0)

    def shape(sl: Slice) -> np.ndarray | None:
        return spot if abs(sl.z - z0) < 4 else None

    return Mimic("metal", 3000.0, shape)


def _dense_falx(rng: np.random.Generator, head: Head) -> Mimic:
    """The falx cerebri itself, a thin line of dura denser than the brain in the midline: the
    whole length of the interhemispheric fissure high in the head, its front and back lower
    down. A classic mimic of an interhemispheric subdural or subarachnoid bleed."""
    half = rng.uniform(0.3, 0.9)
    line = np.abs(head.u) < np.float32(half)
    ends = head.fixed["fissure_ends"]

    def shape(sl: Slice) -> np.ndarray | None:
        if sl.zeta <= -0.1:
            return None
        return sl.cavity & line & (ends if sl.zeta < 0.55 else True)

    return Mimic("dense_falx", rng.uniform(45, 95), shape)


def _scalp_hematoma(rng: np.random.Generator, head: Head) -> Mimic:
    """Blood under the scalp after a blow (subgaleal hematoma): a lens of blood density
    outside the skull, bulging the skin. Often beside a bleed, and not one itself."""
    angle, half = rng.uniform(0, 2 * np.pi), rng.uniform(0.2, 0.6)
    z0, zh, bulge = rng.uniform(-0.1, 0.7) * head.c, rng.uniform(10, 30), rng.uniform(4, 14)
    theta = np.arctan2(head.vn, head.un)
    along = np.clip(1 - (np.angle(np.exp(1j * (theta - angle))) / half) ** 2, 0, None)
    outer_table = head.insets[1] - head.insets[0]  # mean skull thickness, mm under the inner

    def shape(sl: Slice) -> np.ndarray | None:
        level = max(0.0, 1 - ((sl.z - z0) / zh) ** 2)
        if level == 0:
            return None
        reach = np.float32(head.insets[1]) + np.float32(bulge) * np.sqrt(along * level)
        return (along > 0) & (sl.depth < -outer_table) & (sl.depth > -reach) & (sl.hu < 200)

    return Mimic("scalp_hematoma", rng.uniform(50, 80), shape)


MIMIC_BUILDERS: dict[str, Callable[[np.random.Generator, Head], Mimic]] = {
    "choroid_plexus": _choroid_plexus,
    "pineal": _pineal,
    "falx": _falx,
    "dense_sinus": _dense_sinus,
    "basal_ganglia": _basal_ganglia,
    "metal": _metal,
    "scalp_hematoma": _scalp_hematoma,
    "dense_falx": _dense_falx,
}
