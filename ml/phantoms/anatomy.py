"""The project's head anatomy: nested ellipsoidal shells (scalp, skull with diploe, brain) with
gray and white matter, sulci, the interhemispheric fissure, ventricles, basal cisterns and a
skull base. A `Domain` (ml.phantoms.domain) scales, moves, turns and tilts it and sets its
densities; the classic domain leaves it as it always was.

Image axes follow the DICOM patient system for ImageOrientationPatient 1\\0\\0\\0\\1\\0: columns run
to the patient's left (u), rows to posterior (v), slices from inferior to superior.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ml.phantoms import skull_base
from ml.phantoms.domain import Domain
from ml.phantoms.skull_base import SkullBase

CORONAL, LAMBDOID = -0.35, 0.8  # suture angles from the lateral direction (+ = posterior)


@dataclass(frozen=True)
class Head:
    """A random head: semi-axes (mm), tissue values (HU) and 2D fields over its bounding box.

    Everything that does not change with height is computed here once, so a slice costs a few
    comparisons per pixel.
    """

    a: float  # left-right semi-axis
    b: float  # anterior-posterior
    c: float  # inferior-superior
    pixel_mm: float
    box: tuple[slice, slice]  # rows, columns of the image that can hold the head
    hu: dict[str, float]
    atrophy: float  # 0 young .. 1 old: wider sulci, ventricles and cisterns
    y: np.ndarray  # scanner posterior (mm): gravity
    u: np.ndarray  # head left (mm)
    v: np.ndarray  # head posterior (mm)
    un: np.ndarray  # u / a
    vn: np.ndarray  # v / b
    r: np.ndarray  # distance from the head axis (mm)
    shells: tuple[np.ndarray, np.ndarray, np.ndarray]  # skin, outer and inner table, widest level
    insets: tuple[float, float]  # mean depth of the outer and inner table (mm)
    alpha: dict[int, np.ndarray]  # angle from the lateral direction per side (+1 left, -1 right)
    gyri: np.ndarray  # angular phase of the sulcal pattern
    sulcus_depth: np.ndarray  # mm
    fixed: dict[str, np.ndarray]  # masks of structures that only come and go with height
    tilt: float = 0.0  # slope of the slice plane along v (mm of height per mm posterior)
    skull_base: SkullBase | None = None  # None: the classic floor (ellipsoid, petrous ridges)


def make_head(rng: np.random.Generator, size: int, domain: Domain | None = None) -> Head:
    """A random head in a `size` matrix; `domain` (default classic) sets its nuisances."""
    domain = domain or Domain.classic()
    pixel_mm = domain.fov_mm / size
    a, b, c = rng.uniform(68, 78), rng.uniform(86, 98), rng.uniform(95, 108)
    stretch = domain.head_scale * np.sqrt(domain.aspect)
    a, b, c = a * stretch, b * domain.head_scale / np.sqrt(domain.aspect), c * domain.head_scale
    turn = np.deg2rad(rng.uniform(-10, 10) + domain.turn_deg)
    centre = rng.uniform(-8, 8, size=2) + np.asarray(domain.offset_mm)  # mm, x and y
    box = _box(size, centre, (max(a, b) + 2) / pixel_mm, pixel_mm)
    coords = (np.arange(size, dtype=np.float32) - np.float32((size - 1) / 2)) * np.float32(pixel_mm)
    x = coords[None, box[1]] - np.float32(centre[0])
    y = coords[box[0], None] - np.float32(centre[1])
    cos, sin = np.float32(np.cos(turn)), np.float32(np.sin(turn))
    u, v = cos * x + sin * y, cos * y - sin * x
    un, vn = u / np.float32(a), v / np.float32(b)
    r, rho = np.hypot(u, v), np.hypot(un, vn)
    radius = np.divide(r, rho, out=np.full_like(r, a), where=rho > 1e-6)
    theta = np.arctan2(vn, un)
    bumps = sum(
        rng.uniform(0.05, 0.15) * np.cos(k * theta + rng.uniform(0, 6.3)) for k in (2, 3, 5)
    )
    skull = rng.uniform(4, 6) * (1 + 0.25 * np.abs(np.sin(theta)) + bumps)  # thicker front and back
    skull = skull * domain.skull_scale
    scalp = rng.uniform(4, 7)
    atrophy = rng.uniform(0.0, 1.0)
    n_gyri = int(rng.integers(34, 46))
    gyri = n_gyri * theta + rng.uniform(0.6, 1.2) * np.sin(
        rng.integers(3, 7) * theta + rng.uniform(0, 6)
    )
    sulcus = np.floor(gyri / (2 * np.pi) + 0.5).astype(int) % (n_gyri + 8)
    depths = rng.uniform(5, 16, size=n_gyri + 8).astype(np.float32)
    alpha = {1: np.arctan2(vn, un), -1: np.arctan2(vn, -un)}
    hu = {
        "scalp": rng.uniform(25, 50), "table": rng.uniform(1200, 1500), "diploe": rng.uniform(650, 900),
        "gray": rng.uniform(34, 42), "white": rng.uniform(22, 30), "csf": rng.uniform(2, 10),
    }  # fmt: skip
    _apply_densities(hu, domain)
    base = (skull_base.draw(rng, u.shape, hu["table"], pixel_mm) if domain.skull_base
            else None)  # drawn last: the classic head's draws stay as they were
    return Head(
        a=a, b=b, c=c, pixel_mm=pixel_mm, box=box, hu=hu, atrophy=atrophy,
        y=np.broadcast_to(y, u.shape), u=u, v=v, un=un, vn=vn, r=r,
        shells=(radius, radius - scalp, (radius - scalp - skull).astype(np.float32)),
        insets=(scalp, scalp + float(skull.mean())), alpha=alpha,
        gyri=gyri.astype(np.float32), sulcus_depth=depths[sulcus],
        fixed=_fixed_structures(u, un, vn, alpha, atrophy),
        tilt=float(np.tan(np.deg2rad(domain.tilt_deg))), skull_base=base,
    )  # fmt: skip


def _box(size: int, centre: np.ndarray, reach: float, pixel_mm: float) -> tuple[slice, slice]:
    """Rows and columns of the image that can hold a head `reach` pixels around `centre` mm."""
    mid = (size - 1) / 2 + centre / pixel_mm
    lo = np.clip(np.floor(mid - reach), 0, size - 1).astype(int)
    hi = np.clip(np.ceil(mid + reach) + 1, 1, size).astype(int)
    return slice(int(lo[1]), int(hi[1])), slice(int(lo[0]), int(hi[0]))


def _apply_densities(hu: dict[str, float], domain: Domain) -> None:
    if domain.table_hu is not None:
        hu["table"] = domain.table_hu
    if domain.diploe_hu is not None:
        hu["diploe"] = min(domain.diploe_hu, 0.8 * hu["table"])
    if domain.tissue_hu is not None:
        hu["gray"], hu["white"], hu["csf"] = domain.tissue_hu


def _fixed_structures(
    u: np.ndarray, un: np.ndarray, vn: np.ndarray, alpha: dict[int, np.ndarray], atrophy: float
) -> dict[str, np.ndarray]:
    au = np.abs(un)
    grow = 1 + 0.8 * atrophy
    # lateral ventricles: frontal horns, bodies, atria and occipital horns diverging posteriorly
    centre = 0.09 + 0.16 * np.clip(vn - 0.05, 0, None)
    half = grow * (
        0.03
        + 0.035 * np.exp(-(((vn - 0.3) / 0.12) ** 2))
        + 0.02 * np.exp(-(((vn + 0.3) / 0.1) ** 2))
    )
    half *= np.clip((vn + 0.42) / 0.08, 0, 1) * np.clip((0.55 - vn) / 0.1, 0, 1)
    sylvian = -0.1 - 0.2 * (1 - au)
    suprasellar_v, ambient_v = vn + np.float32(0.12), vn - np.float32(0.05)
    return {
        "lateral": np.abs(au - centre) / np.maximum(half, 1e-6),  # < sqrt(height profile) inside
        "third": band(un, 0, 0.012 * grow) & band(vn, -0.04, 0.11),
        "fourth": (un / 0.06) ** 2 + ((vn - 0.32) / 0.05) ** 2 < 1,
        "ambient": band(np.hypot(un * 0.9, ambient_v * 1.15), 0.175, 0.022 + 0.01 * atrophy),
        "suprasellar": np.hypot(un, suprasellar_v * 1.2) < 0.09,
        "sylvian": (np.abs(vn - sylvian) < 0.015 + 0.01 * atrophy) & band(au, 0.62, 0.32),
        "nuclei": (((au - 0.22) / 0.08) ** 2 + ((vn + 0.02) / 0.16) ** 2 < 1)
        | (((au - 0.08) / 0.07) ** 2 + ((vn - 0.12) / 0.1) ** 2 < 1),
        "fissure": band(u, 0, 0.8 + 0.8 * atrophy),
        "fissure_ends": np.abs(vn) > 0.45,
        "petrous": (np.abs(vn - (0.05 + 0.4 * (au - 0.2))) < 0.045) & (au > 0.18) & (au < 0.85),
        "sinus": (un / 0.22) ** 2 + ((vn + 0.7) / 0.12) ** 2 < 1,
        "sutures": band(alpha[1], CORONAL, 0.01) | band(alpha[1], LAMBDOID, 0.01)
        | band(alpha[-1], CORONAL, 0.01) | band(alpha[-1], LAMBDOID, 0.01),
    }  # fmt: skip


@dataclass
class Slice:
    """One axial level: where things are, for the lesions to use (arrays over the head box)."""

    z: float  # mm above the head centre
    zeta: float  # z / c
    hu: np.ndarray
    depth: np.ndarray  # mm inside the inner table of the skull (negative outside)
    cavity: np.ndarray  # brain and CSF: where blood can be
    sulci: np.ndarray
    ventricles: np.ndarray
    cisterns: np.ndarray


def band(x: np.ndarray, center: float, half: float) -> np.ndarray:
    return np.abs(x - np.float32(center)) < np.float32(half)


def _level(head: Head, z: float, inset: float) -> float:
    """Shrink factor of the surface `inset` mm under the skin at height z (ellipsoid cap)."""
    c = (head.c if z >= 0 else 1.4 * head.c) - inset  # flatter below: skull base, not a dome
    return float(np.sqrt(max(0.0, 1 - (z / c) ** 2)))


def _levels(head: Head, z: np.ndarray, inset: float) -> np.ndarray:
    """`_level` per pixel, for a tilted slice plane whose height varies across the image."""
    c = np.where(z >= 0, head.c, 1.4 * head.c) - inset
    return np.sqrt(np.clip(1 - (z / c) ** 2, 0.0, None)).astype(np.float32)


def _brain(head: Head, sl: Slice) -> None:
    """Gray and white matter and the CSF spaces, in place."""
    fixed, zeta, depth, cavity = head.fixed, sl.zeta, sl.depth, sl.cavity
    sl.hu[cavity] = head.hu["white"]
    wiggle = np.sin(depth * np.float32(0.45) + head.gyri * np.float32(0.37) + np.float32(5 * zeta))
    gyral = np.cos(head.gyri + np.float32(0.9) * wiggle + np.float32(3 * zeta))
    sulcal = cavity & (depth < head.sulcus_depth)
    sl.sulci = sulcal & (gyral > 0.8 - 0.25 * head.atrophy)
    gray = cavity & ((depth < 3.0) | (sulcal & (gyral > 0.2)))
    if -0.05 < zeta < 0.3:
        gray |= cavity & fixed["nuclei"]
    sl.hu[gray] = head.hu["gray"]
    vent = np.zeros_like(cavity)
    lateral = 1 - ((zeta - 0.27) / 0.28) ** 2
    if lateral > 0:
        vent |= fixed["lateral"] < np.sqrt(lateral)
    if -0.12 < zeta < 0.08:
        vent |= fixed["third"]
    if -0.45 < zeta < -0.22:
        vent |= fixed["fourth"]
    sl.ventricles = vent & cavity
    cisterns = np.zeros_like(cavity)
    if -0.3 < zeta < -0.08:
        cisterns |= fixed["ambient"] | fixed["suprasellar"]
    if -0.25 < zeta < 0.15:
        cisterns |= fixed["sylvian"]
    sl.cisterns = cisterns & cavity
    fissure = fixed["fissure"] if zeta >= 0.55 else fixed["fissure"] & fixed["fissure_ends"]
    csf = sl.sulci | sl.ventricles | sl.cisterns | (cavity & (depth < 0.5 + 1.2 * head.atrophy))
    if zeta > -0.1:
        csf |= cavity & fissure
    sl.hu[csf] = head.hu["csf"]


def make_slice(head: Head, z: float) -> Slice:
    zeta = z / head.c
    if head.tilt:
        heights = np.float32(z) + np.float32(head.tilt) * head.v
        skin, outer, inner = (
            shell * _levels(head, heights, inset)
            for shell, inset in zip(head.shells, (0.0, *head.insets), strict=True)
        )
    else:
        skin, outer, inner = (
            shell * np.float32(_level(head, z, inset))
            for shell, inset in zip(head.shells, (0.0, *head.insets), strict=True)
        )
    r = head.r
    hu = np.full(r.shape, -1000.0, dtype=np.float32)
    hu[r < skin] = head.hu["scalp"]
    depth = inner - r
    skull = (r < outer) & (depth <= 0)
    across = (outer - r) / np.maximum(outer - inner, 1e-3)
    diploe = skull & (across > 0.3) & (across < 0.7)
    hu[skull] = head.hu["table"]
    hu[diploe] = head.hu["diploe"]
    if zeta > 0:
        hu[skull & head.fixed["sutures"]] = 90.0
    cavity = depth > 0
    empty = np.zeros_like(cavity)
    sl = Slice(z, zeta, hu, depth, cavity, empty, empty, empty)
    _brain(head, sl)
    if zeta < -0.25:  # skull base: petrous ridges; anterior fossa floor and sinuses
        bone = head.fixed["petrous"].copy()
        if zeta < -0.3:
            front = head.vn < 0.8 * (zeta + 0.3) - 0.2 - 0.45 * np.abs(head.un)  # sphenoid wings
            bone |= front & ~head.fixed["sinus"]
            hu[cavity & front & head.fixed["sinus"]] = -950.0
            bone |= front & head.fixed["sinus"]
        hu[cavity & bone & (hu > -900)] = head.hu["table"]
        cavity &= ~bone
        for name in ("sulci", "ventricles", "cisterns"):
            setattr(sl, name, getattr(sl, name) & cavity)
    if head.skull_base is not None:
        skull_base.apply(head, sl, head.skull_base)
    return sl


