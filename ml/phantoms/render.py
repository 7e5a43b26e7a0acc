"""A phantom volume: anatomy, mimics and lesions drawn level by level, then the scanner.

`render` draws the head, lesions and noise from separate random streams: the same generator
state gives the same head and noise with or without lesions, so a lesion is exactly the
difference between two volumes. A randomized domain draws its nuisances, the mimics and the
lesions' densities from a fourth stream.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ml.labels import LABELS, SUBTYPES
from ml.phantoms.anatomy import Head, make_head, make_slice
from ml.phantoms.domain import Domain
from ml.phantoms.lesions import LESIONS, Lesion, age_subdural, patchy, spread_to_falx
from ml.phantoms.mimics import MIMIC_BUILDERS, Mimic
from ml.phantoms.scanner import add_noise, beam_hardening, metal_streaks, smooth, smooth_field

SLICE_THICKNESS_MM = 5.0  # of the classic series
MIN_LESION_MM2 = 10.0  # a subtype is positive on a slice showing at least this much of it


@dataclass(frozen=True)
class Rendered:
    hu: np.ndarray  # int16 (slices, size, size)
    labels: np.ndarray  # uint8 (slices, 6), LABELS order
    step_mm: float  # between slice centres
    thickness_mm: float
    pixel_mm: float
    domain: Domain


@dataclass(frozen=True)
class _Extras:
    """What a level needs beyond anatomy and lesions: fields over the head box."""

    mimics: tuple[Mimic, ...]
    texture: np.ndarray | None  # HU added over the brain
    swirl: np.ndarray  # in [0, 1]: where a mixed clot is unclotted
    rng: np.random.Generator  # metal streaks
    visible_hu: float  # Domain.visible_hu


def render(
    rng: np.random.Generator, slices: int, size: int, subtypes: Sequence[str], *,
    randomize: bool = False, varied: bool = False, domain: Domain | None = None,
) -> Rendered:  # fmt: skip
    """Draw one volume; `randomize` draws a random `Domain` (`varied`: see `Domain.draw`),
    else `domain` (default classic)."""
    if slices < 1 or size < 16:
        raise ValueError(f"need slices >= 1 and size >= 16, got slices={slices}, size={size}")
    unknown = [s for s in subtypes if s not in LESIONS]
    if unknown:
        raise ValueError(f"subtypes: unknown {unknown}; known: {', '.join(SUBTYPES)}")
    head_rng, lesion_rng, noise_rng = rng.spawn(3)
    (extra_rng,) = rng.spawn(1)
    if randomize:
        domain = Domain.draw(extra_rng, varied=varied)
    domain = domain or Domain.classic()
    head = make_head(head_rng, size, domain)
    lesions = [LESIONS[s](lesion_rng, head) for s in subtypes]
    if domain.blood_hu is not None:
        lesions = _vary_lesions(extra_rng, lesions, head, domain)
    extras = _extras(extra_rng, head, domain)
    heights = np.linspace(*domain.zeta_range, slices) * head.c
    step = float(heights[1] - heights[0]) if slices > 1 else SLICE_THICKNESS_MM
    vol = np.full((slices, size, size), -1000.0, dtype=np.float32)
    labels = np.zeros((slices, len(LABELS)), dtype=np.uint8)
    min_pixels = max(3, round(MIN_LESION_MM2 / head.pixel_mm**2))
    offsets = (np.arange(domain.partial_volume) + 0.5) / domain.partial_volume - 0.5
    for k, z in enumerate(heights):
        counts = np.zeros(len(LABELS))
        box = vol[(k, *head.box)]
        box[:] = 0
        for offset in offsets:
            hu, drawn = _level(head, float(z + offset * step), lesions, extras)
            box += hu / len(offsets)
            counts += drawn / len(offsets)
        labels[k] = counts >= min_pixels
    labels[:, 0] = labels[:, 1:].max(axis=1)
    _scanner(noise_rng, extra_rng, vol, head, heights, domain)
    thickness = SLICE_THICKNESS_MM if domain == Domain.classic() else round(step * 1.0, 2)
    return Rendered(np.rint(vol, out=vol).astype(np.int16), labels, step, thickness,
                    head.pixel_mm, domain)  # fmt: skip


def _vary_lesions(
    rng: np.random.Generator, lesions: list[Lesion], head: Head, domain: Domain
) -> list[Lesion]:
    """Randomized densities (subtle to dense, some mixed), now and then a second lesion, and
    the variants of ml.phantoms.lesions: aged subdurals, patches, spread along the falx."""
    assert domain.blood_hu is not None
    out = []
    for lesion in lesions:
        copies = [lesion]
        if rng.uniform() < 0.25:
            copies.append(LESIONS[lesion.subtype](rng, head))
        for copy in copies:
            mix = rng.uniform(15, 35) if rng.uniform() < domain.mixed_clot else 0.0
            copy = dataclasses.replace(copy, blood_hu=rng.uniform(*domain.blood_hu), mix=mix)
            # Each variant draws only when its domain has it (the randomized style's draws
            # stay as they were).
            if copy.subtype == "subdural" and _happens(rng, domain.subdural_ages):
                copy = age_subdural(rng, copy, head)
            if copy.subtype in ("subarachnoid", "intraventricular") and _happens(rng, domain.patchy):
                copy = patchy(rng, copy, head)
            if copy.subtype in ("subarachnoid", "subdural") and _happens(rng, domain.spread):
                copy = spread_to_falx(rng, copy, head)
            out.append(copy)
    return out


def _happens(rng: np.random.Generator, probability: float) -> bool:
    return probability > 0 and bool(rng.uniform() < probability)


def _extras(rng: np.random.Generator, head: Head, domain: Domain) -> _Extras:
    shape = head.u.shape
    texture = None
    if domain.texture_hu > 0:
        texture = domain.texture_hu * (smooth_field(rng, shape, 12) + 0.5 * smooth_field(rng, shape, 40))
    swirl = np.clip(smooth_field(rng, shape, 10) * 1.5 + 0.3, 0, 1)
    mimics = tuple(MIMIC_BUILDERS[name](rng, head) for name in domain.mimics)
    return _Extras(mimics, texture, swirl, rng, domain.visible_hu)


def _level(
    head: Head, z: float, lesions: Sequence[Lesion], extras: _Extras
) -> tuple[np.ndarray, np.ndarray]:
    """HU over the head box at height z, and the blood pixels per label (LABELS order)."""
    sl = make_slice(head, z)
    if extras.texture is not None:
        sl.hu[sl.cavity] += extras.texture[sl.cavity]
    for mimic in extras.mimics:
        mask = mimic.shape(sl)
        if mask is None or not mask.any():
            continue
        sl.hu[mask] = mimic.hu
        if mimic.name == "metal":
            centre = (float(head.u[mask].mean()), float(head.v[mask].mean()))
            sl.hu += metal_streaks(extras.rng, head.u, head.v, centre) * (sl.hu > -500)
    counts = np.zeros(len(LABELS))
    for lesion in lesions:
        edema = lesion.edema(sl) if lesion.edema else None
        if edema is not None:
            sl.hu[edema] = lesion.edema_hu
        blood = lesion.shape(sl)
        if blood is None:
            continue
        before = sl.hu[blood]
        values = lesion.blood_hu - lesion.mix * extras.swirl[blood]
        if lesion.serum_hu is not None:
            values = np.where(head.y[blood] < lesion.level_y, np.float32(lesion.serum_hu), values)
        sl.hu[blood] = values
        shown = (np.abs(values - before) >= extras.visible_hu) if extras.visible_hu else blood
        counts[LABELS.index(lesion.subtype)] += np.count_nonzero(shown)
    return sl.hu, counts


def _scanner(
    noise_rng: np.random.Generator, rng: np.random.Generator, vol: np.ndarray, head: Head,
    heights: np.ndarray, domain: Domain,
) -> None:  # fmt: skip
    box = vol[(slice(None), *head.box)]  # outside the box is uniform air
    tissue = box > -500
    if domain.bias_hu > 0:
        cupping = np.clip(1 - (head.r / max(head.a, head.b)) ** 2, 0, 1)
        field = smooth_field(rng, head.u.shape, 3) - rng.uniform(0, 1) * cupping
        box += np.float32(domain.bias_hu) * field * tissue
    if domain.streaks_hu > 0:
        streaks = beam_hardening(rng, head.u, head.v, head.a, head.b, domain.streaks_hu)
        for k, z in enumerate(heights):
            weight = np.clip((-0.1 - z / head.c) / 0.3, 0, 1)
            if weight > 0:
                box[k] += np.float32(weight) * streaks * tissue[k]
    if domain.hu_offset:
        box += np.float32(domain.hu_offset) * tissue
    smooth(box, domain.blur_passes)
    add_noise(noise_rng, vol, noise_rng.uniform(*domain.noise_hu), domain.noise_passes)
    np.clip(vol, -1024, 3071, out=vol)
