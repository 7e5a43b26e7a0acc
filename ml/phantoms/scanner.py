"""What the scanner adds to the anatomy: softness, noise with the reconstruction kernel's
texture, low-frequency fields (cupping, drift, parenchymal texture) and streaks (beam
hardening between the petrous bones, metal).
"""

from __future__ import annotations

from types import EllipsisType

import numpy as np


def smooth(vol: np.ndarray, passes: int = 1) -> None:
    """In-place [1 2 1]/4 blur of the last two axes, `passes` times: partial-volume softness."""
    for _ in range(passes):
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


def add_noise(rng: np.random.Generator, vol: np.ndarray, sigma: float, passes: int = 1) -> None:
    """Gaussian noise of standard deviation `sigma`, blurred `passes` times (0: a sharp kernel's
    white noise, 3: a smooth kernel's blotches).

    Drawing normals dominates the cost, so a few planes are drawn and each slice takes one of
    them flipped or transposed: eight different looks per plane, no visible repetition.
    """
    bank = rng.standard_normal((min(len(vol), 4), *vol.shape[1:]), dtype=np.float32)
    smooth(bank, passes)
    bank *= np.float32(sigma) / bank.std()
    for k, plane in enumerate(vol):
        noise = bank[k % len(bank)]
        look = (k // len(bank)) % 8
        noise = noise[::-1] if look & 1 else noise
        noise = noise[:, ::-1] if look & 2 else noise
        plane += noise.T if look & 4 and noise.shape[0] == noise.shape[1] else noise


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """A random field over `shape`, smooth on the scale of shape / cells, in [-1, 1]."""
    coarse = rng.uniform(-1, 1, size=(cells + 1, cells + 1))
    rows = np.linspace(0, cells, shape[0])
    cols = np.linspace(0, cells, shape[1])
    along = np.stack([np.interp(cols, np.arange(cells + 1), row) for row in coarse])
    field = np.stack([np.interp(rows, np.arange(cells + 1), col) for col in along.T], axis=1)
    return field.astype(np.float32)


def line_profile(
    x: np.ndarray, y: np.ndarray, point: tuple[float, float], angle: float, width: float
) -> np.ndarray:
    """exp(-(d / width)^2) of the distance d to the line through `point` at `angle` (radians)."""
    d = (x - np.float32(point[0])) * np.float32(np.sin(angle)) - (
        y - np.float32(point[1])
    ) * np.float32(np.cos(angle))
    return np.exp(-((d / np.float32(width)) ** 2))


def beam_hardening(
    rng: np.random.Generator, u: np.ndarray, v: np.ndarray, a: float, b: float, amplitude: float
) -> np.ndarray:
    """Dark band between the petrous bones (the Hounsfield bar) and a few alternating streaks
    through the posterior fossa: an HU offset over (u, v)."""
    level = np.float32(rng.uniform(0.0, 0.15) * b)
    out = -amplitude * line_profile(u, v, (0.0, float(level)), 0.0, rng.uniform(2, 6))
    for _ in range(int(rng.integers(1, 5))):
        point = (rng.uniform(-0.4, 0.4) * a, rng.uniform(-0.1, 0.5) * b)
        sign = rng.choice([-1.0, 0.6])
        out += sign * amplitude * line_profile(u, v, point, rng.uniform(0, np.pi), rng.uniform(1, 3))
    return out.astype(np.float32)


def metal_streaks(
    rng: np.random.Generator, u: np.ndarray, v: np.ndarray, centre: tuple[float, float]
) -> np.ndarray:
    """Bright and dark streaks radiating from a metal object at `centre` (mm)."""
    out = np.zeros(u.shape, dtype=np.float32)
    for _ in range(int(rng.integers(4, 10))):
        out += rng.uniform(-400, 400) * line_profile(u, v, centre, rng.uniform(0, np.pi),
                                                     rng.uniform(0.5, 2.0))  # fmt: skip
    distance = np.hypot(u - np.float32(centre[0]), v - np.float32(centre[1]))
    return out * np.float32(30.0) / (np.float32(30.0) + distance)
