"""A second phantom style, written apart from ml.phantoms.anatomy/lesions, to measure transfer.

Everything here is described in polar coordinates around the head's axis: the outline is a
superellipse with a few Fourier harmonics, the skull, cortex and lesions are bands of the
normalised radius s = r / R(theta, z). Textures are power-law (1/f) fields made in Fourier
space, noise is white noise shaped by a Gaussian transfer function. Use it only to validate:
train on one style, report on the other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ml.labels import LABELS, SUBTYPES
from ml.phantoms.domain import Domain
from ml.phantoms.render import MIN_LESION_MM2, Rendered


def _fourier_field(rng: np.random.Generator, size: int, beta: float, cutoff: float) -> np.ndarray:
    """Zero-mean, unit-std field with power ~ 1/f^beta, nothing above `cutoff` (cycles/px)."""
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(size), np.fft.rfftfreq(size), indexing="ij"))
    spectrum = np.where((f > 0) & (f < cutoff), np.maximum(f, 1e-3) ** (-beta / 2), 0.0)
    phases = rng.standard_normal(f.shape) + 1j * rng.standard_normal(f.shape)
    field = np.fft.irfft2(spectrum * phases, s=(size, size))
    return ((field - field.mean()) / (field.std() + 1e-9)).astype(np.float32)


@dataclass
class _Plane:
    """One level of the polar head: coordinates and the masks lesions need."""

    zeta: float
    x: np.ndarray  # mm, patient left
    y: np.ndarray  # mm, posterior
    theta: np.ndarray
    s: np.ndarray  # r / R: < s_inner is inside the skull
    s_inner: np.ndarray
    radius: np.ndarray  # R in mm
    hu: np.ndarray
    intracranial: np.ndarray
    csf_surface: np.ndarray
    ventricles: np.ndarray
    cistern: np.ndarray


class _PolarHead:
    def __init__(self, rng: np.random.Generator, size: int) -> None:
        self.size = size
        self.fov = rng.uniform(200, 270)
        self.pixel = self.fov / size
        self.semi = (rng.uniform(62, 80), rng.uniform(80, 100), rng.uniform(90, 110))
        self.power = rng.uniform(1.8, 3.0)
        self.harmonics = [(k, rng.uniform(0, 0.04), rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4, 6)]
        self.centre = rng.uniform(-15, 15, 2)
        self.angle = rng.uniform(-0.3, 0.3)
        self.scalp, self.bone = rng.uniform(3, 8), rng.uniform(3.5, 9)
        self.density = {"scalp": rng.uniform(10, 60), "bone": rng.uniform(900, 1900),
                        "marrow": rng.uniform(300, 700), "white": rng.uniform(20, 32),
                        "csf": rng.uniform(-2, 12)}  # fmt: skip
        self.density["gray"] = self.density["white"] + rng.uniform(5, 14)
        self.cortex = rng.uniform(2.5, 4.5)
        self.ventricle_scale = rng.uniform(0.8, 1.6)
        self.texture = _fourier_field(rng, size, rng.uniform(1.5, 2.5), 0.2) * rng.uniform(1, 4)
        self.folds = _fourier_field(rng, size, 0.5, rng.uniform(0.04, 0.08))
        side = (np.arange(size) - (size - 1) / 2) * self.pixel
        gx, gy = np.meshgrid(side - self.centre[0], side - self.centre[1])
        c, s = np.cos(self.angle), np.sin(self.angle)
        self.x, self.y = (c * gx + s * gy).astype(np.float32), (c * gy - s * gx).astype(np.float32)
        self.r, self.theta = np.hypot(self.x, self.y), np.arctan2(self.y, self.x)
        self.calcified, self.dense_sinus = bool(rng.uniform() < 0.5), bool(rng.uniform() < 0.4)
        self.calc_y, self.calc_hu = rng.uniform(5, 25), rng.uniform(100, 400)

    def plane(self, zeta: float) -> _Plane:
        a, b, c = self.semi
        scale = np.sqrt(max(0.0, 1 - zeta**2 / (1.0 if zeta > 0 else 1.6)))
        ct, st = np.abs(np.cos(self.theta)), np.abs(np.sin(self.theta))
        base = (ct / a) ** self.power + (st / b) ** self.power
        radius = base ** (-1 / self.power) * max(scale, 1e-3)
        radius *= 1 + sum(amp * np.cos(k * self.theta + ph) for k, amp, ph in self.harmonics)
        s = self.r / np.maximum(radius, 1e-3)
        s_bone = 1 - self.scalp / np.maximum(radius, 1e-3)
        s_inner = s_bone - self.bone / np.maximum(radius, 1e-3)
        hu = np.full(s.shape, -1000.0, dtype=np.float32)
        hu[s < 1] = self.density["scalp"]
        skull = (s < s_bone) & (s >= s_inner)
        across = (s_bone - s) / np.maximum(s_bone - s_inner, 1e-3)
        hu[skull] = self.density["bone"] - (self.density["bone"] - self.density["marrow"]) * np.sin(
            np.pi * across[skull]) ** 2  # fmt: skip
        inside = (s < s_inner) & (scale > 0.15)
        depth = (s_inner - s) * radius  # mm under the inner table
        hu[inside] = self.density["white"] + self.texture[inside]
        cortex = inside & (depth < self.cortex * (1.6 + 0.8 * self.folds))
        hu[cortex] = self.density["gray"] + self.texture[cortex]
        sulci = inside & (depth < 12) & (np.abs(self.folds) < 0.12 + 0.1 * (depth < 2))
        ventricles = self._ventricles(zeta) & inside
        cistern = inside & (abs(zeta + 0.15) < 0.1) & (np.abs(np.hypot(self.x, self.y - 5) - 17) < 2.5)
        csf = sulci | ventricles | cistern
        hu[csf] = self.density["csf"]
        if zeta < -0.3:  # skull base: bony ridges inside the cranium
            ridge = inside & (np.abs(self.y - 0.6 * np.abs(self.x) + 10) < 4 + 3 * self.folds) & (
                np.abs(self.x) > 12)  # fmt: skip
            hu[ridge] = self.density["bone"]
            inside &= ~ridge
        return _Plane(zeta, self.x, self.y, self.theta, s, s_inner, radius, hu, inside,
                      sulci & inside, ventricles, cistern)  # fmt: skip

    def _ventricles(self, zeta: float) -> np.ndarray:
        k = self.ventricle_scale
        if 0.05 < zeta < 0.55:
            grow = k * np.sqrt(1 - ((zeta - 0.3) / 0.25) ** 2)
            mask = np.zeros(self.x.shape, dtype=bool)
            for side in (1, -1):  # butterfly: two tilted ellipses
                xr = self.x - side * 9 * k
                t = side * 0.25
                xe, ye = np.cos(t) * xr + np.sin(t) * self.y, np.cos(t) * self.y - np.sin(t) * xr
                mask |= (xe / (4 * grow + 1)) ** 2 + ((ye - 2) / (25 * grow + 2)) ** 2 < 1
            return mask
        if -0.1 < zeta <= 0.05:
            return (np.abs(self.x) < 1.5 * k) & (np.abs(self.y - 2) < 10)
        return np.zeros(self.x.shape, dtype=bool)


_Shape = Callable[[_Plane], np.ndarray]


def _extent(rng: np.random.Generator, low: float, high: float, half: tuple[float, float]
            ) -> Callable[[float], float]:  # fmt: skip
    centre, h = rng.uniform(low, high), rng.uniform(*half)
    return lambda zeta: max(0.0, 1 - ((zeta - centre) / h) ** 2)


def _wrap(angle: np.ndarray) -> np.ndarray:
    return np.angle(np.exp(1j * angle))


def _rim_bleed(rng: np.random.Generator, lens: bool) -> _Shape:
    """Epidural (lens: thick middle, short arc) or subdural (crescent: thin, long arc)."""
    t0 = rng.uniform(-np.pi, np.pi)
    arc = rng.uniform(0.25, 0.5) if lens else rng.uniform(0.7, 1.5)
    thick = rng.uniform(7, 16) if lens else rng.uniform(3, 11)
    extent = _extent(rng, 0.1, 0.6, (0.1, 0.2) if lens else (0.2, 0.4))

    def shape(p: _Plane) -> np.ndarray:
        frac = 1 - (_wrap(p.theta - t0) / arc) ** 2
        frac = np.clip(frac, 0, None) if lens else np.sqrt(np.clip(frac, 0, None))
        depth = (p.s_inner - p.s) * p.radius
        return p.intracranial & (depth < thick * frac * extent(p.zeta))

    return shape


def _parenchymal(rng: np.random.Generator, head: _PolarHead) -> _Shape:
    x0, y0 = rng.uniform(-35, 35), rng.uniform(-45, 35)
    axes = rng.uniform(5, 16, 3)
    z0 = rng.uniform(-0.1, 0.6)
    wobble = head.folds * rng.uniform(0.1, 0.3)

    def shape(p: _Plane) -> np.ndarray:
        dz = (p.zeta - z0) * head.semi[2] / axes[2]
        d = np.hypot((p.x - x0) / axes[0], (p.y - y0) / axes[1]) ** 2 + dz**2
        return p.intracranial & (d + wobble < 1)

    return shape


def _ventricular(rng: np.random.Generator) -> _Shape:
    level = rng.uniform(-5, 25)  # fluid level along y (posterior is dependent, supine)
    return lambda p: p.ventricles & (p.y > level)


def _subarachnoid(rng: np.random.Generator) -> _Shape:
    t0, arc = rng.uniform(-np.pi, np.pi), rng.uniform(0.5, 1.4)
    extent = _extent(rng, 0.1, 0.7, (0.15, 0.35))
    cisternal = rng.uniform() < 0.4

    def shape(p: _Plane) -> np.ndarray:
        mask = p.csf_surface & (np.abs(_wrap(p.theta - t0)) < arc) & (extent(p.zeta) > 0)
        return mask | p.cistern if cisternal else mask

    return shape


def _lesion(rng: np.random.Generator, head: _PolarHead, subtype: str) -> _Shape:
    if subtype in ("epidural", "subdural"):
        return _rim_bleed(rng, lens=subtype == "epidural")
    if subtype == "intraparenchymal":
        return _parenchymal(rng, head)
    if subtype == "intraventricular":
        return _ventricular(rng)
    return _subarachnoid(rng)


def _mimics(rng: np.random.Generator, head: _PolarHead, plane: _Plane) -> None:
    """Midline calcifications and a dense sinus, now and then: bright, never labelled."""
    midline = (np.abs(plane.x) < 2.5) & plane.intracranial
    if head.calcified and 0.0 < plane.zeta < 0.35:
        plane.hu[midline & (np.abs(plane.y - head.calc_y) < 2.5)] = head.calc_hu
    if head.dense_sinus and plane.zeta > 0.1:
        depth = (plane.s_inner - plane.s) * plane.radius
        plane.hu[midline & (depth < 5) & (plane.y > 0)] = rng.uniform(55, 75)


def render_polar(
    rng: np.random.Generator, slices: int, size: int, subtypes: Sequence[str]
) -> Rendered:
    """A polar-style phantom volume, labelled like ml.phantoms.render's."""
    if slices < 1 or size < 16:
        raise ValueError(f"need slices >= 1 and size >= 16, got slices={slices}, size={size}")
    unknown = [s for s in subtypes if s not in SUBTYPES]
    if unknown:
        raise ValueError(f"subtypes: unknown {unknown}; known: {', '.join(SUBTYPES)}")
    head = _PolarHead(rng, size)
    lesions = [(name, _lesion(rng, head, name), rng.uniform(45, 95)) for name in subtypes]
    zetas = np.linspace(rng.uniform(-0.6, -0.4), rng.uniform(0.75, 0.95), slices)
    vol = np.empty((slices, size, size), dtype=np.float32)
    labels = np.zeros((slices, len(LABELS)), dtype=np.uint8)
    min_pixels = max(3, round(MIN_LESION_MM2 / head.pixel**2))
    for k, zeta in enumerate(zetas):
        plane = head.plane(float(zeta))
        _mimics(rng, head, plane)
        for name, shape, density in lesions:
            blood = shape(plane)
            plane.hu[blood] = density
            if np.count_nonzero(blood) >= min_pixels:
                labels[k, LABELS.index(name)] = 1
        vol[k] = plane.hu
    labels[:, 0] = labels[:, 1:].max(axis=1)
    _noise(rng, vol)
    step = float(zetas[1] - zetas[0]) * head.semi[2] if slices > 1 else 5.0
    domain = Domain(fov_mm=head.fov)
    return Rendered(np.rint(np.clip(vol, -1024, 3071)).astype(np.int16), labels, step,
                    round(step, 2), head.pixel, domain)  # fmt: skip


def _noise(rng: np.random.Generator, vol: np.ndarray) -> None:
    """Blur by a Gaussian transfer function, then add noise shaped by another one."""
    size = vol.shape[-1]
    f2 = np.add.outer(np.fft.fftfreq(size) ** 2, np.fft.rfftfreq(size) ** 2)
    blur = np.exp(-f2 / (2 * rng.uniform(0.12, 0.3) ** 2))
    kernel = np.exp(-f2 / (2 * rng.uniform(0.08, 0.5) ** 2))
    sigma = rng.uniform(2, 12)
    for k in range(len(vol)):
        vol[k] = np.fft.irfft2(np.fft.rfft2(vol[k]) * blur, s=(size, size))
        noise = np.fft.irfft2(np.fft.rfft2(rng.standard_normal((size, size))) * kernel, s=(size, size))
        vol[k] += (sigma * noise / (noise.std() + 1e-9)).astype(np.float32)
