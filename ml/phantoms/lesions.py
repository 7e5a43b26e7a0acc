"""Lesions of the five RSNA subtypes, drawn where each occurs on the anatomy of ml.phantoms.anatomy.

A lesion is a density and a shape: a function of an axial level that returns the mask of blood
on it (or None when the lesion does not reach that level).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ml.phantoms.anatomy import CORONAL, LAMBDOID, Head, Slice, band
from ml.phantoms.scanner import smooth_field

_Shape = Callable[[Slice], "np.ndarray | None"]


@dataclass(frozen=True)
class Lesion:
    subtype: str
    blood_hu: float
    shape: _Shape
    edema: _Shape | None = None
    edema_hu: float = 15.0
    mix: float = 0.0  # 0: uniform clot; > 0: HU by which a swirl of unclotted blood is darker
    # A settled collection (hematocrit level): above `level_y` (scanner posterior, mm, the
    # direction of gravity for a supine patient) serum of `serum_hu`; None: no level.
    serum_hu: float | None = None
    level_y: float = 0.0


def _z_profile(z: float, z0: float, half: float) -> float:
    """1 at z0, 0 at z0 +- half and beyond (an ellipse's height profile, squared)."""
    return max(0.0, 1 - ((z - z0) / half) ** 2)


def _epidural(rng: np.random.Generator, head: Head) -> Lesion:
    """Biconvex lens against the inner table, held between the coronal and lambdoid sutures."""
    side = int(rng.choice([1, -1]))
    half = rng.uniform(0.2, 0.4)
    centre = rng.uniform(CORONAL + half, LAMBDOID - half)
    z0, zh, thick = rng.uniform(0.05, 0.55) * head.c, rng.uniform(10, 22), rng.uniform(8, 18)

    def shape(sl: Slice) -> np.ndarray | None:
        level = _z_profile(sl.z, z0, zh)
        if level == 0:
            return None
        profile = level - ((head.alpha[side] - centre) / half) ** 2
        return sl.cavity & (sl.depth < thick * profile)

    return Lesion("epidural", rng.uniform(60, 90), shape)


def _subdural(rng: np.random.Generator, head: Head) -> Lesion:
    """Thin crescent along the inner table, long, crossing sutures."""
    side = int(rng.choice([1, -1]))
    half, centre = rng.uniform(0.8, 1.4), rng.uniform(-0.3, 0.6)
    z0, zh, thick = rng.uniform(0.1, 0.5) * head.c, rng.uniform(25, 55), rng.uniform(4, 14)

    def shape(sl: Slice) -> np.ndarray | None:
        level = _z_profile(sl.z, z0, zh)
        if level == 0:
            return None
        along = np.clip(1 - ((head.alpha[side] - centre) / half) ** 2, 0, None)
        return sl.cavity & (sl.depth < thick * np.sqrt(along * level))

    return Lesion("subdural", rng.uniform(55, 85), shape)


def _subarachnoid(rng: np.random.Generator, head: Head) -> Lesion:
    """Blood in the sulci of a convexity and/or in the basal cisterns and Sylvian fissures."""
    kind = rng.choice(["sulcal", "cisternal", "both"])
    side = int(rng.choice([1, -1]))
    half, centre = rng.uniform(0.5, 1.1), rng.uniform(-0.6, 0.8)
    z0, zh = rng.uniform(0.1, 0.65) * head.c, rng.uniform(15, 35)

    def shape(sl: Slice) -> np.ndarray | None:
        mask = np.zeros_like(sl.cavity)
        if kind != "cisternal" and _z_profile(sl.z, z0, zh) > 0:
            mask |= sl.sulci & band(head.alpha[side], centre, half)
        if kind != "sulcal":
            mask |= sl.cisterns
        return mask

    return Lesion("subarachnoid", rng.uniform(58, 80), shape)


def _intraventricular(rng: np.random.Generator, head: Head) -> Lesion:
    """Blood layering in the dependent (posterior, patient supine) horns, or a cast."""
    layering = rng.uniform() < 0.6
    level = rng.uniform(0.15, 0.35) * head.b  # fluid level, along gravity
    sides = {1: head.u > 0, -1: head.u < 0}
    side = sides[int(rng.choice([1, -1]))] if rng.uniform() < 0.4 else np.ones_like(head.u, bool)

    def shape(sl: Slice) -> np.ndarray | None:
        mask = sl.ventricles & side
        return mask & (head.y > level) if layering else mask

    return Lesion("intraventricular", rng.uniform(55, 85), shape)


_IPH_SITES = {  # (u/a, v/b, z/c) centres: basal ganglia, thalamus, cerebellum; lobar is random
    "putamen": (0.22, -0.02, 0.12),
    "thalamus": (0.09, 0.12, 0.15),
    "cerebellum": (0.22, 0.5, -0.38),
}


def _intraparenchymal(rng: np.random.Generator, head: Head) -> Lesion:
    """Rounded, irregular clot in the parenchyma with a hypodense edema rim."""
    site = rng.choice([*_IPH_SITES, "lobar", "lobar"])
    if site == "lobar":
        angle, reach = rng.uniform(0, 2 * np.pi), rng.uniform(0.3, 0.6)
        un0, vn0, zeta0 = reach * np.cos(angle), reach * np.sin(angle), rng.uniform(0.15, 0.65)
    else:
        un0, vn0, zeta0 = _IPH_SITES[str(site)]
        un0 *= float(rng.choice([1, -1]))
    u0, v0, z0 = un0 * head.a, vn0 * head.b, zeta0 * head.c
    radius, zh, rim = rng.uniform(6, 18), rng.uniform(7, 16), rng.uniform(2, 6)
    lobes = [(rng.uniform(0.05, 0.2), k, rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5)]
    du, dv = head.u - np.float32(u0), head.v - np.float32(v0)
    dist = np.hypot(du, dv)
    bumpy = 1 + sum(amp * np.cos(k * np.arctan2(dv, du) + ph) for amp, k, ph in lobes)

    def outline(sl: Slice, grow: float) -> np.ndarray | None:
        level = _z_profile(sl.z, z0, zh + grow)
        return None if level == 0 else sl.cavity & (dist < (radius + grow) * np.sqrt(level) * bumpy)

    return Lesion(
        "intraparenchymal", rng.uniform(60, 85), lambda sl: outline(sl, 0.0),
        edema=lambda sl: outline(sl, rim), edema_hu=head.hu["white"] - rng.uniform(8, 14),
    )  # fmt: skip


LESIONS = {
    "epidural": _epidural,
    "subdural": _subdural,
    "subarachnoid": _subarachnoid,
    "intraventricular": _intraventricular,
    "intraparenchymal": _intraparenchymal,
}


# Variants of the varied style (ml.phantoms.domain.Domain.draw, varied=True): what the lesions
# above never show. The classic and randomized styles do not use them.


def age_subdural(rng: np.random.Generator, lesion: Lesion, head: Head) -> Lesion:
    """A subdural that is not acute: subacute (about isodense to the cortex), chronic
    (hypodense, between CSF and white matter) or settled (acute cells layering under chronic
    serum, a hematocrit level)."""
    kind = rng.choice(["subacute", "chronic", "settled"])
    if kind == "subacute":
        return dataclasses.replace(lesion, blood_hu=head.hu["gray"] + rng.uniform(4, 16), mix=0.0)
    chronic = rng.uniform(8, 28)
    if kind == "chronic":
        return dataclasses.replace(lesion, blood_hu=chronic, mix=0.0)
    level = rng.uniform(-0.3, 0.5) * head.b
    return dataclasses.replace(lesion, blood_hu=rng.uniform(45, 80), serum_hu=chronic,
                               level_y=level, mix=0.0)


def patchy(rng: np.random.Generator, lesion: Lesion, head: Head) -> Lesion:
    """The lesion only where a smooth random field, changing with height, is high: blood that
    fills some cisterns, sulci or a horn and not the rest."""
    first = smooth_field(rng, head.u.shape, int(rng.integers(5, 14)))
    second = smooth_field(rng, head.u.shape, int(rng.integers(5, 14)))
    period, keep = rng.uniform(10, 30), rng.uniform(-0.35, 0.35)
    shape = lesion.shape

    def patches(sl: Slice) -> np.ndarray | None:
        mask = shape(sl)
        if mask is None:
            return None
        phase = np.float32(sl.z / period)
        return mask & (first * np.cos(phase) + second * np.sin(phase) > keep)

    return dataclasses.replace(lesion, shape=patches)


def spread_to_falx(rng: np.random.Generator, lesion: Lesion, head: Head) -> Lesion:
    """Add blood along the falx: a subarachnoid bleed in the interhemispheric fissure, or an
    interhemispheric subdural (a strip on one side of the falx)."""
    z0, zh = rng.uniform(0.15, 0.7) * head.c, rng.uniform(10, 30)
    v0 = rng.uniform(-0.8, 0.2)
    front_back = (head.vn > v0) & (head.vn < v0 + rng.uniform(0.3, 0.9))
    if lesion.subtype == "subdural":
        side, width = float(rng.choice([1, -1])), rng.uniform(1.5, 4.0)
        strip = band(head.u, side * (1.0 + width / 2), width / 2) & front_back
    else:
        strip = band(head.u, 0, rng.uniform(1.0, 2.5)) & front_back
    shape = lesion.shape

    def with_strip(sl: Slice) -> np.ndarray | None:
        mask = shape(sl)
        if _z_profile(sl.z, z0, zh) == 0:
            return mask
        along = sl.cavity & strip
        return along if mask is None else mask | along

    return dataclasses.replace(lesion, shape=with_strip)
