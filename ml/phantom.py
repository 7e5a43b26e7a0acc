"""Synthetic non-contrast head CT with the five hemorrhage subtypes, written as real DICOM.

The head is a set of nested ellipsoidal shells (scalp, skull with diploe, brain) with gray and
white matter, sulci, the interhemispheric fissure, ventricles, basal cisterns and a skull base;
lesions are drawn where each subtype occurs. Good enough to exercise the pipeline and to train
the demo model; no substitute for real data.

Image axes follow the DICOM patient system for ImageOrientationPatient 1\\0\\0\\0\\1\\0: columns run
to the patient's left (u), rows to posterior (v), slices from inferior to superior.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import EllipsisType

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from ml.labels import LABELS, SUBTYPES

FIELD_OF_VIEW_MM = 230.4  # 0.45 mm pixels at 512
SLICE_THICKNESS_MM = 5.0
MIN_LESION_MM2 = 10.0  # a subtype is positive on a slice showing at least this much of it
_ZETA_RANGE = (-0.5, 0.9)  # scanned span, as fractions of the head's vertical semi-axis
_CORONAL, _LAMBDOID = -0.35, 0.8  # suture angles from the lateral direction (+ = posterior)

TRANSFER_SYNTAXES = (
    ExplicitVRLittleEndian,
    RLELossless,
    JPEGLSLossless,
    JPEG2000Lossless,
    DeflatedExplicitVRLittleEndian,
)


@dataclass(frozen=True)
class PhantomSeries:
    """One written series."""

    study_uid: str
    series_uid: str
    patient_id: str
    paths: tuple[Path, ...]  # slice order, inferior -> superior
    sop_uids: tuple[str, ...]
    labels: np.ndarray  # (n_slices, 6) uint8, LABELS order


# --- anatomy -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Head:
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


def _make_head(rng: np.random.Generator, size: int) -> _Head:
    pixel_mm = FIELD_OF_VIEW_MM / size
    a, b, c = rng.uniform(68, 78), rng.uniform(86, 98), rng.uniform(95, 108)
    turn = np.deg2rad(rng.uniform(-10, 10))
    centre = rng.uniform(-8, 8, size=2)  # mm, x and y
    reach = (max(a, b) + 2) / pixel_mm
    mid = (size - 1) / 2 + centre / pixel_mm
    lo, hi = (
        np.maximum(np.floor(mid - reach), 0).astype(int),
        np.minimum(np.ceil(mid + reach) + 1, size).astype(int),
    )
    box = (slice(int(lo[1]), int(hi[1])), slice(int(lo[0]), int(hi[0])))
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
    return _Head(
        a=a, b=b, c=c, pixel_mm=pixel_mm, box=box, hu=hu, atrophy=atrophy,
        y=np.broadcast_to(y, u.shape), u=u, v=v, un=un, vn=vn, r=r,
        shells=(radius, radius - scalp, (radius - scalp - skull).astype(np.float32)),
        insets=(scalp, scalp + float(skull.mean())), alpha=alpha,
        gyri=gyri.astype(np.float32), sulcus_depth=depths[sulcus],
        fixed=_fixed_structures(u, un, vn, alpha, atrophy),
    )  # fmt: skip


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
        "third": _band(un, 0, 0.012 * grow) & _band(vn, -0.04, 0.11),
        "fourth": (un / 0.06) ** 2 + ((vn - 0.32) / 0.05) ** 2 < 1,
        "ambient": _band(np.hypot(un * 0.9, ambient_v * 1.15), 0.175, 0.022 + 0.01 * atrophy),
        "suprasellar": np.hypot(un, suprasellar_v * 1.2) < 0.09,
        "sylvian": (np.abs(vn - sylvian) < 0.015 + 0.01 * atrophy) & _band(au, 0.62, 0.32),
        "nuclei": (((au - 0.22) / 0.08) ** 2 + ((vn + 0.02) / 0.16) ** 2 < 1)
        | (((au - 0.08) / 0.07) ** 2 + ((vn - 0.12) / 0.1) ** 2 < 1),
        "fissure": _band(u, 0, 0.8 + 0.8 * atrophy),
        "fissure_ends": np.abs(vn) > 0.45,
        "petrous": (np.abs(vn - (0.05 + 0.4 * (au - 0.2))) < 0.045) & (au > 0.18) & (au < 0.85),
        "sinus": (un / 0.22) ** 2 + ((vn + 0.7) / 0.12) ** 2 < 1,
        "sutures": _band(alpha[1], _CORONAL, 0.01) | _band(alpha[1], _LAMBDOID, 0.01)
        | _band(alpha[-1], _CORONAL, 0.01) | _band(alpha[-1], _LAMBDOID, 0.01),
    }  # fmt: skip


@dataclass
class _Slice:
    """One axial level: where things are, for the lesions to use (arrays over the head box)."""

    z: float  # mm above the head centre
    zeta: float  # z / c
    hu: np.ndarray
    depth: np.ndarray  # mm inside the inner table of the skull (negative outside)
    cavity: np.ndarray  # brain and CSF: where blood can be
    sulci: np.ndarray
    ventricles: np.ndarray
    cisterns: np.ndarray


def _band(x: np.ndarray, center: float, half: float) -> np.ndarray:
    return np.abs(x - np.float32(center)) < np.float32(half)


def _level(head: _Head, z: float, inset: float) -> float:
    """Shrink factor of the surface `inset` mm under the skin at height z (ellipsoid cap)."""
    c = (head.c if z >= 0 else 1.4 * head.c) - inset  # flatter below: skull base, not a dome
    return float(np.sqrt(max(0.0, 1 - (z / c) ** 2)))


def _brain(head: _Head, sl: _Slice) -> None:
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


def _make_slice(head: _Head, z: float) -> _Slice:
    zeta = z / head.c
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
    sl = _Slice(z, zeta, hu, depth, cavity, empty, empty, empty)
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
    return sl


# --- lesions -------------------------------------------------------------------------------------

_Shape = Callable[[_Slice], "np.ndarray | None"]


@dataclass(frozen=True)
class _Lesion:
    subtype: str
    blood_hu: float
    shape: _Shape
    edema: _Shape | None = None
    edema_hu: float = 15.0


def _z_profile(z: float, z0: float, half: float) -> float:
    """1 at z0, 0 at z0 +- half and beyond (an ellipse's height profile, squared)."""
    return max(0.0, 1 - ((z - z0) / half) ** 2)


def _epidural(rng: np.random.Generator, head: _Head) -> _Lesion:
    """Biconvex lens against the inner table, held between the coronal and lambdoid sutures."""
    side = int(rng.choice([1, -1]))
    half = rng.uniform(0.2, 0.4)
    centre = rng.uniform(_CORONAL + half, _LAMBDOID - half)
    z0, zh, thick = rng.uniform(0.05, 0.55) * head.c, rng.uniform(10, 22), rng.uniform(8, 18)

    def shape(sl: _Slice) -> np.ndarray | None:
        level = _z_profile(sl.z, z0, zh)
        if level == 0:
            return None
        profile = level - ((head.alpha[side] - centre) / half) ** 2
        return sl.cavity & (sl.depth < thick * profile)

    return _Lesion("epidural", rng.uniform(60, 90), shape)


def _subdural(rng: np.random.Generator, head: _Head) -> _Lesion:
    """Thin crescent along the inner table, long, crossing sutures."""
    side = int(rng.choice([1, -1]))
    half, centre = rng.uniform(0.8, 1.4), rng.uniform(-0.3, 0.6)
    z0, zh, thick = rng.uniform(0.1, 0.5) * head.c, rng.uniform(25, 55), rng.uniform(4, 14)

    def shape(sl: _Slice) -> np.ndarray | None:
        level = _z_profile(sl.z, z0, zh)
        if level == 0:
            return None
        along = np.clip(1 - ((head.alpha[side] - centre) / half) ** 2, 0, None)
        return sl.cavity & (sl.depth < thick * np.sqrt(along * level))

    return _Lesion("subdural", rng.uniform(55, 85), shape)


def _subarachnoid(rng: np.random.Generator, head: _Head) -> _Lesion:
    """Blood in the sulci of a convexity and/or in the basal cisterns and Sylvian fissures."""
    kind = rng.choice(["sulcal", "cisternal", "both"])
    side = int(rng.choice([1, -1]))
    half, centre = rng.uniform(0.5, 1.1), rng.uniform(-0.6, 0.8)
    z0, zh = rng.uniform(0.1, 0.65) * head.c, rng.uniform(15, 35)

    def shape(sl: _Slice) -> np.ndarray | None:
        mask = np.zeros_like(sl.cavity)
        if kind != "cisternal" and _z_profile(sl.z, z0, zh) > 0:
            mask |= sl.sulci & _band(head.alpha[side], centre, half)
        if kind != "sulcal":
            mask |= sl.cisterns
        return mask

    return _Lesion("subarachnoid", rng.uniform(58, 80), shape)


def _intraventricular(rng: np.random.Generator, head: _Head) -> _Lesion:
    """Blood layering in the dependent (posterior, patient supine) horns, or a cast."""
    layering = rng.uniform() < 0.6
    level = rng.uniform(0.15, 0.35) * head.b  # fluid level, along gravity
    sides = {1: head.u > 0, -1: head.u < 0}
    side = sides[int(rng.choice([1, -1]))] if rng.uniform() < 0.4 else np.ones_like(head.u, bool)

    def shape(sl: _Slice) -> np.ndarray | None:
        mask = sl.ventricles & side
        return mask & (head.y > level) if layering else mask

    return _Lesion("intraventricular", rng.uniform(55, 85), shape)


_IPH_SITES = {  # (u/a, v/b, z/c) centres: basal ganglia, thalamus, cerebellum; lobar is random
    "putamen": (0.22, -0.02, 0.12),
    "thalamus": (0.09, 0.12, 0.15),
    "cerebellum": (0.22, 0.5, -0.38),
}


def _intraparenchymal(rng: np.random.Generator, head: _Head) -> _Lesion:
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

    def outline(sl: _Slice, grow: float) -> np.ndarray | None:
        level = _z_profile(sl.z, z0, zh + grow)
        return None if level == 0 else sl.cavity & (dist < (radius + grow) * np.sqrt(level) * bumpy)

    return _Lesion(
        "intraparenchymal", rng.uniform(60, 85), lambda sl: outline(sl, 0.0),
        edema=lambda sl: outline(sl, rim), edema_hu=head.hu["white"] - rng.uniform(8, 14),
    )  # fmt: skip


_LESIONS = {
    "epidural": _epidural,
    "subdural": _subdural,
    "subarachnoid": _subarachnoid,
    "intraventricular": _intraventricular,
    "intraparenchymal": _intraparenchymal,
}


# --- volumes -------------------------------------------------------------------------------------


def _slice_heights(head: _Head, slices: int) -> np.ndarray:
    return np.linspace(_ZETA_RANGE[0], _ZETA_RANGE[1], slices) * head.c


def _smooth(vol: np.ndarray) -> None:
    """In-place [1 2 1]/4 blur of the last two axes: the scanner's partial-volume softness."""
    for axis in (-2, -1):

        def at(part: slice, axis: int = axis) -> tuple[EllipsisType | slice, ...]:
            return (Ellipsis, part, slice(None)) if axis == -2 else (Ellipsis, part)

        src = vol.copy()
        vol *= 2
        vol[at(slice(1, None))] += src[at(slice(None, -1))]
        vol[at(slice(None, -1))] += src[at(slice(1, None))]
        for end in (slice(0, 1), slice(-1, None)):  # replicate the border
            vol[at(end)] += src[at(end)]
        vol *= 0.25


def _render(
    rng: np.random.Generator, slices: int, size: int, subtypes: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, float]:
    """(hu int16, labels uint8, slice step mm)."""
    if slices < 1 or size < 16:
        raise ValueError(f"need slices >= 1 and size >= 16, got slices={slices}, size={size}")
    unknown = [s for s in subtypes if s not in _LESIONS]
    if unknown:
        raise ValueError(f"subtypes: unknown {unknown}; known: {', '.join(SUBTYPES)}")
    # separate streams: the same generator state gives the same head and noise with or without
    # lesions, so a lesion is exactly the difference between two volumes
    head_rng, lesion_rng, noise_rng = rng.spawn(3)
    head = _make_head(head_rng, size)
    lesions = [_LESIONS[s](lesion_rng, head) for s in subtypes]
    heights = _slice_heights(head, slices)
    vol = np.full((slices, size, size), -1000.0, dtype=np.float32)
    labels = np.zeros((slices, len(LABELS)), dtype=np.uint8)
    min_pixels = max(3, round(MIN_LESION_MM2 / head.pixel_mm**2))
    for k, z in enumerate(heights):
        sl = _make_slice(head, float(z))
        for lesion in lesions:
            edema = lesion.edema(sl) if lesion.edema else None
            if edema is not None:
                sl.hu[edema] = lesion.edema_hu
            blood = lesion.shape(sl)
            if blood is None:
                continue
            sl.hu[blood] = lesion.blood_hu
            if np.count_nonzero(blood) >= min_pixels:
                labels[k, LABELS.index(lesion.subtype)] = 1
        vol[(k, *head.box)] = sl.hu
    labels[:, 0] = labels[:, 1:].max(axis=1)
    _smooth(vol[(slice(None), *head.box)])  # outside the box is uniform air
    _add_noise(noise_rng, vol, sigma=noise_rng.uniform(3, 6))
    np.clip(vol, -1024, 3071, out=vol)
    step = float(heights[1] - heights[0]) if slices > 1 else SLICE_THICKNESS_MM
    return np.rint(vol, out=vol).astype(np.int16), labels, step


def _add_noise(rng: np.random.Generator, vol: np.ndarray, sigma: float) -> None:
    """Correlated (blurred) Gaussian noise, as reconstruction kernels leave it.

    Drawing normals dominates the cost, so a few planes are drawn and each slice takes one of
    them flipped or transposed: eight different looks per plane, no visible repetition.
    """
    bank = rng.standard_normal((min(len(vol), 4), *vol.shape[1:]), dtype=np.float32)
    _smooth(bank)
    bank *= np.float32(sigma) / bank.std()
    for k, plane in enumerate(vol):
        noise = bank[k % len(bank)]
        look = (k // len(bank)) % 8
        noise = noise[::-1] if look & 1 else noise
        noise = noise[:, ::-1] if look & 2 else noise
        plane += noise.T if look & 4 and noise.shape[0] == noise.shape[1] else noise


def make_volume(
    rng: np.random.Generator, *, slices: int = 32, size: int = 512, subtypes: Sequence[str] = ()
) -> tuple[np.ndarray, np.ndarray]:
    """A random head: (HU int16 (slices, size, size), labels uint8 (slices, 6) in LABELS order).

    `subtypes` names the lesions to place (none: a normal head). Slices run inferior to superior
    from the skull base to the vertex; pixels are FIELD_OF_VIEW_MM / size wide.
    """
    hu, labels, _ = _render(rng, slices, size, subtypes)
    return hu, labels


# --- DICOM ---------------------------------------------------------------------------------------

_PIXEL_FORMATS = (  # (BitsStored, PixelRepresentation, padding outside the reconstruction circle)
    (16, 1, -2000),
    (12, 0, None),
    (16, 0, None),
)


def _uid(*parts: object) -> pydicom.uid.UID:
    return generate_uid(entropy_srcs=["ichtriage-phantom", *map(str, parts)])


def _series_attributes(
    rng: np.random.Generator, seed: int, study_uid: str, series_uid: str, patient_id: str
) -> dict[str, object]:
    """Everything the slices of one series share (PS3.3 A.3, CT Image IOD)."""
    day = datetime.date(2020, 1, 1) + datetime.timedelta(days=int(rng.integers(0, 1800)))
    moment = f"{int(rng.integers(0, 24)):02d}{int(rng.integers(0, 60)):02d}{int(rng.integers(0, 60)):02d}"
    born = day - datetime.timedelta(days=int(rng.integers(18 * 365, 95 * 365)))
    age = (day - born).days // 365
    return {
        "SpecificCharacterSet": "ISO_IR 100",
        "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
        "SOPClassUID": CTImageStorage,
        "StudyDate": day.strftime("%Y%m%d"), "SeriesDate": day.strftime("%Y%m%d"),
        "AcquisitionDate": day.strftime("%Y%m%d"), "ContentDate": day.strftime("%Y%m%d"),
        "StudyTime": moment, "SeriesTime": moment, "AcquisitionTime": moment, "ContentTime": moment,
        "AccessionNumber": f"PH{seed % 10**10:010d}",
        "Modality": "CT",
        "Manufacturer": "ichtriage",
        "ManufacturerModelName": "head phantom",
        "InstitutionName": "Synthetic",
        "ReferringPhysicianName": "",
        "StudyDescription": "CT HEAD WITHOUT CONTRAST",
        "SeriesDescription": "AXIAL 5mm BRAIN (synthetic phantom)",
        "PatientName": f"PHANTOM^{seed % 10000:04d}",
        "PatientID": patient_id,
        "PatientBirthDate": born.strftime("%Y%m%d"),
        "PatientSex": str(rng.choice(["F", "M"])),
        "PatientAge": f"{age:03d}Y",
        "BodyPartExamined": "HEAD",
        "SliceThickness": SLICE_THICKNESS_MM,
        "KVP": 120,
        "DataCollectionDiameter": 500,
        "ReconstructionDiameter": FIELD_OF_VIEW_MM,
        "ConvolutionKernel": "H30s",
        "PatientPosition": "HFS",
        "StudyInstanceUID": study_uid,
        "SeriesInstanceUID": series_uid,
        "StudyID": "1",
        "SeriesNumber": 2,
        "AcquisitionNumber": 1,
        "FrameOfReferenceUID": _uid(seed, "frame", study_uid),
        "PositionReferenceIndicator": "",
        "ImageOrientationPatient": [1, 0, 0, 0, 1, 0],
        "SamplesPerPixel": 1,
        "PhotometricInterpretation": "MONOCHROME2",
        "BitsAllocated": 16,
        "WindowCenter": [40, 600],
        "WindowWidth": [80, 2800],
        "WindowCenterWidthExplanation": ["BRAIN", "BONE"],
        "RescaleIntercept": -1024,
        "RescaleSlope": 1,
        "RescaleType": "HU",
    }  # fmt: skip


def _stored_values(hu: np.ndarray, bits: int, signed: int, padding: int | None) -> np.ndarray:
    stored = hu.astype(np.int32) + 1024
    if padding is not None:  # outside the reconstruction circle
        size = hu.shape[-1]
        yy, xx = np.ogrid[:size, :size]
        centre = (size - 1) / 2
        stored[(yy - centre) ** 2 + (xx - centre) ** 2 > (size / 2) ** 2] = padding
    np.clip(stored, -(2 ** (bits - 1)) if signed else 0, 2 ** (bits - signed) - 1, out=stored)
    return stored.astype(np.int16 if signed else np.uint16)


def write_series(
    out_dir: Path,
    *,
    seed: int,
    slices: int = 32,
    size: int = 512,
    subtypes: Sequence[str] = (),
    transfer_syntax: str | None = None,
    study_uid: str | None = None,
    patient_id: str | None = None,
    image_ids: bool = False,
) -> PhantomSeries:
    """Write one phantom series as CT Image Storage files, one per slice, into out_dir.

    The same arguments write byte-identical files. `transfer_syntax` is a UID among
    TRANSFER_SYNTAXES (default Explicit VR Little Endian). `image_ids` names the files like the
    RSNA challenge ("ID_<9 hex>.dcm") instead of "<InstanceNumber>.dcm".
    """
    syntax = pydicom.uid.UID(transfer_syntax or ExplicitVRLittleEndian)
    if syntax not in TRANSFER_SYNTAXES:
        names = ", ".join(f"{t} ({t.name})" for t in TRANSFER_SYNTAXES)
        raise ValueError(f"transfer_syntax {syntax!r} is not supported; use one of {names}")
    volume_rng, meta_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    hu, labels, step = _render(volume_rng, slices, size, subtypes)
    study_uid = study_uid or _uid(seed, "study")
    series_uid = _uid(seed, "series", study_uid)  # write_dataset relies on this recipe
    patient_id = patient_id or f"PHANTOM-{seed}"[:64]
    common = _series_attributes(meta_rng, seed, study_uid, series_uid, patient_id)
    bits, signed, padding = _PIXEL_FORMATS[int(meta_rng.integers(len(_PIXEL_FORMATS)))]
    pixel_mm = FIELD_OF_VIEW_MM / size
    corner = -(size - 1) / 2 * pixel_mm
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths, sop_uids = [], []
    for k in range(slices):
        sop_uid = _uid(seed, "image", series_uid, k)
        ds = pydicom.Dataset()
        for keyword, value in common.items():
            setattr(ds, keyword, value)
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = k + 1
        z = round(-80.0 + k * step, 3)
        ds.ImagePositionPatient = [round(corner, 3), round(corner, 3), z]
        ds.SliceLocation = z
        ds.Rows = ds.Columns = size
        ds.PixelSpacing = [round(pixel_mm, 6), round(pixel_mm, 6)]
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, signed
        if padding is not None:
            ds.PixelPaddingValue = padding
        ds.PixelData = _stored_values(hu[k], bits, signed, padding).tobytes()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        if syntax.is_compressed:
            ds.compress(syntax, generate_instance_uid=False)
        else:
            ds.file_meta.TransferSyntaxUID = syntax
        stem = f"ID_{hashlib.sha1(sop_uid.encode()).hexdigest()[:9]}" if image_ids else str(k + 1)
        path = out_dir / f"{stem}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
        sop_uids.append(sop_uid)
    return PhantomSeries(study_uid, series_uid, patient_id, tuple(paths), tuple(sop_uids), labels)


def _study_plan(
    rng: np.random.Generator, studies: int, positive_fraction: float
) -> list[tuple[str, ...]]:
    """Subtypes per study: every subtype equally often, some studies with two or three."""
    positives = round(studies * positive_fraction)
    order = list(SUBTYPES)
    plan: list[tuple[str, ...]] = []
    for i in range(positives):
        if i % len(order) == 0:
            rng.shuffle(order)
        chosen = {order[i % len(order)]}
        while rng.uniform() < 0.3 and len(chosen) < 3:
            chosen.add(str(rng.choice(SUBTYPES)))
        plan.append(tuple(sorted(chosen)))
    plan += [()] * (studies - positives)
    return [plan[i] for i in rng.permutation(studies)]


def write_dataset(
    out_dir: Path,
    *,
    studies: int,
    seed: int,
    slices: int = 24,
    size: int = 256,
    positive_fraction: float = 0.6,
) -> Path:
    """Write `studies` phantom studies as out_dir/<StudyUID>/<SeriesUID>/ID_<hex>.dcm and their
    labels as out_dir/labels.csv in the RSNA 2019 stage_2_train.csv format; return the CSV path.
    """
    if studies < 1:
        raise ValueError(f"studies must be >= 1, got {studies}")
    if not 0 <= positive_fraction <= 1:
        raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
    out_dir = Path(out_dir)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x1C4]))
    rows: list[tuple[str, int]] = []
    for i, subtypes in enumerate(_study_plan(rng, studies, positive_fraction)):
        study_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        study_uid = _uid(seed, "dataset-study", i)
        series_dir = out_dir / study_uid / _uid(study_seed, "series", study_uid)
        series = write_series(
            series_dir, seed=study_seed, slices=slices, size=size, subtypes=subtypes,
            study_uid=study_uid, patient_id=f"PH-{seed}-{i:05d}"[:64], image_ids=True,
        )  # fmt: skip
        for path, labels in zip(series.paths, series.labels, strict=True):
            for name in (*SUBTYPES, "any"):  # the challenge lists "any" last
                rows.append((f"{path.stem}_{name}", int(labels[LABELS.index(name)])))
    csv_path = out_dir / "labels.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["ID", "Label"])
        writer.writerows(rows)
    return csv_path
