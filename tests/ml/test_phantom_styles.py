"""Domain randomization, mimics and the second (polar) phantom style."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ml.labels import LABELS, SUBTYPES
from ml.phantom import make_volume, write_dataset
from ml.phantoms import polar
from ml.phantoms.anatomy import make_head, make_slice
from ml.phantoms.domain import MIMICS, Domain
from ml.phantoms.lesions import LESIONS, age_subdural
from ml.phantoms.render import _Extras, _level, render
from ml.rsna import group_series, index_images, read_labels

SIZE = 96


def test_domain_draw_is_reproducible_and_varies_with_the_seed() -> None:
    draws = [Domain.draw(np.random.default_rng(seed)) for seed in range(40)]
    assert Domain.draw(np.random.default_rng(3)) == draws[3]
    for field in ("fov_mm", "head_scale", "turn_deg", "tilt_deg", "skull_scale", "table_hu",
                  "texture_hu", "bias_hu", "hu_offset", "streaks_hu"):  # fmt: skip
        values = [getattr(d, field) for d in draws]
        assert np.ptp(values) > 0, field
    assert {d.noise_passes for d in draws} >= {0, 1, 2, 3}  # sharp to smooth kernels
    assert {d.blur_passes for d in draws} >= {0, 3} and {d.partial_volume for d in draws} == {1, 2}
    assert min(d.fov_mm for d in draws) < 200 < 280 < max(d.fov_mm for d in draws)
    for d in draws:
        assert d.tissue_hu is not None and d.tissue_hu[0] > d.tissue_hu[1]  # gray above white
        assert d.blood_hu == (40.0, 100.0)
    seen = {name for d in draws for name in d.mimics}
    only_varied = {"scalp_hematoma", "dense_falx"}
    assert seen == set(MIMICS) - only_varied
    assert sum(bool(d.mimics) for d in draws) > 0.8 * len(draws)
    for d in draws:
        assert (d.subdural_ages, d.patchy, d.spread, d.visible_hu) == (0, 0, 0, 0)


def test_the_varied_style_adds_to_the_randomized_draw() -> None:
    """Domain.draw(varied=True) draws the randomized domain first, unchanged (so the shipped
    recipe's phantoms stay as they were), then its own parameters and mimics."""
    for seed in range(40):
        plain = Domain.draw(np.random.default_rng(seed))
        varied = Domain.draw(np.random.default_rng(seed), varied=True)
        assert varied.mimics[:len(plain.mimics)] == plain.mimics
        assert dataclasses.replace(varied, subdural_ages=0.0, patchy=0.0, spread=0.0,
                                   visible_hu=0.0, mimics=plain.mimics) == plain
        assert varied.subdural_ages > 0 and varied.patchy > 0 and varied.visible_hu > 0
    seen = {name for seed in range(40)
            for name in Domain.draw(np.random.default_rng(seed), varied=True).mimics}
    assert seen == set(MIMICS)


def test_randomized_volumes_repeat_per_seed_and_differ_across_seeds() -> None:
    a = render(np.random.default_rng(5), 8, SIZE, ("subdural",), randomize=True)
    b = render(np.random.default_rng(5), 8, SIZE, ("subdural",), randomize=True)
    c = render(np.random.default_rng(6), 8, SIZE, ("subdural",), randomize=True)
    np.testing.assert_array_equal(a.hu, b.hu)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.domain == b.domain != c.domain
    assert a.pixel_mm != c.pixel_mm  # the field of view is part of the domain
    classic = render(np.random.default_rng(5), 8, SIZE, ("subdural",))
    assert classic.domain == Domain.classic() and not np.array_equal(classic.hu, a.hu)


def test_noise_level_follows_the_domain() -> None:
    quiet = dataclasses.replace(Domain.classic(), noise_hu=(2.0, 2.0), noise_passes=0)
    loud = dataclasses.replace(quiet, noise_hu=(15.0, 15.0))
    corner = (slice(None), slice(0, 12), slice(0, 12))  # air, noise only
    std = [float(render(np.random.default_rng(1), 4, SIZE, (), domain=d).hu[corner].std())
           for d in (quiet, loud)]  # fmt: skip
    assert std[0] < 4 < 10 < std[1]


def test_negatives_carry_mimics_and_no_labels() -> None:
    plain = render(np.random.default_rng(9), 16, 128, ())
    mimics = dataclasses.replace(Domain.classic(), mimics=MIMICS)
    shown = render(np.random.default_rng(9), 16, 128, (), domain=mimics)
    assert not shown.labels.any()
    changed = np.abs(shown.hu.astype(np.int32) - plain.hu) > 30
    assert changed.sum() > 50  # the mimics were drawn
    assert shown.hu[changed].max() >= 300  # calcification or metal: bright
    sharp = dataclasses.replace(Domain.classic(), noise_hu=(0.0, 0.0), blur_passes=0)
    plain = render(np.random.default_rng(9), 16, 128, (), domain=sharp)
    sinus = render(np.random.default_rng(9), 16, 128, (),
                   domain=dataclasses.replace(sharp, mimics=("dense_sinus",)))  # fmt: skip
    moved = sinus.hu != plain.hu
    assert moved.sum() > 10 and 50 <= sinus.hu[moved].min() and sinus.hu[moved].max() <= 80
    assert not sinus.labels.any()


@pytest.mark.parametrize("subtype", SUBTYPES)
def test_randomized_blood_is_40_to_100_hu_and_labelled(subtype: str) -> None:
    domain = dataclasses.replace(Domain.classic(), blood_hu=(40.0, 100.0), mixed_clot=0.0,
                                 noise_hu=(0.0, 0.0), blur_passes=0)  # fmt: skip
    normal = render(np.random.default_rng(21), 16, 128, (), domain=domain)
    sick = render(np.random.default_rng(21), 16, 128, (subtype,), domain=domain)
    column = LABELS.index(subtype)
    assert sick.labels[:, column].any() and not normal.labels.any()
    diff = sick.hu != normal.hu
    values = sick.hu[diff & (sick.hu > 35)]
    assert values.size > 20 and 40 <= values.min() and values.max() <= 100


def test_polar_style_labels_its_lesions_and_repeats() -> None:
    for subtype in SUBTYPES:
        hu, labels = make_volume(np.random.default_rng(4), slices=16, size=128,
                                 subtypes=(subtype,), style="polar")  # fmt: skip
        assert labels[:, LABELS.index(subtype)].any(), subtype
        np.testing.assert_array_equal(labels[:, 0], labels[:, 1:].max(axis=1))
        assert labels[:, 1:].sum(axis=0)[[s != subtype for s in SUBTYPES]].sum() == 0
    again, _ = make_volume(np.random.default_rng(4), slices=16, size=128,
                           subtypes=(SUBTYPES[-1],), style="polar")  # fmt: skip
    np.testing.assert_array_equal(hu, again)
    _, normal = make_volume(np.random.default_rng(4), slices=16, size=128, style="polar")
    assert not normal.any()


def test_polar_style_is_written_apart() -> None:
    """The validation style shares no geometry or texture code with the training anatomy."""
    tree = ast.parse(Path(polar.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not imported & {"ml.phantoms.anatomy", "ml.phantoms.lesions", "ml.phantoms.mimics",
                           "ml.phantoms.scanner"}  # fmt: skip


def test_unknown_style_is_rejected() -> None:
    with pytest.raises(ValueError, match="style"):
        make_volume(np.random.default_rng(0), slices=2, size=32, style="nope")


def test_randomized_dataset_varies_slice_counts(tmp_path: Path) -> None:
    csv_path = write_dataset(tmp_path, studies=4, seed=3, slices=8, size=64,
                             positive_fraction=0.5, style="randomized")  # fmt: skip
    records = index_images(tmp_path, read_labels(csv_path))
    counts = {len(series) for series in group_series(records)}
    assert len(counts) > 1 and min(counts) >= 6 and max(counts) <= 12


def _cavity_areas(domain: Domain, seed: int = 4) -> list[int]:
    """Pixels of cranial cavity (brain and CSF) per level, from below the skull base up."""
    head = make_head(np.random.default_rng(seed), 128, domain)
    return [int(make_slice(head, zeta * head.c).cavity.sum())
            for zeta in np.linspace(-0.8, 0.8, 33)]


def test_the_randomized_skull_base_narrows_the_cavity_to_the_fossae() -> None:
    """Issue 13: the lowest slices are islands of brain among bone, sinuses and orbits (as in
    head CT); the classic anatomy (an ellipsoid cut by petrous ridges) is left as it was."""
    with_base = dataclasses.replace(Domain.classic(), skull_base=True)
    classic, based = _cavity_areas(Domain.classic()), _cavity_areas(with_base)
    widest = max(based)
    assert max(classic) == widest  # above the floors the two heads are the same
    assert classic[16:] == based[16:]
    assert based[0] < 0.1 * widest < 0.6 * widest < classic[4]  # zeta -0.6: skull base
    head = make_head(np.random.default_rng(4), 128, with_base)
    assert head.skull_base is not None
    low = make_slice(head, (head.skull_base.middle_floor + 0.02) * head.c)
    assert not (low.cavity & (head.vn < -0.5)).any()  # no frontal lobe under the orbital roofs
    assert (low.hu > 500).sum() > low.cavity.sum() * 0.3  # bone all around
    assert (low.hu < -800).any()  # air: sphenoid sinus, mastoid or ethmoid cells


def test_no_lesion_is_drawn_in_the_skull_base() -> None:
    """Blood only where the cavity is: the same head with and without lesions differs only
    on pixels that are not bone or air without them."""
    checked = 0
    for seed in range(8):
        domain = dataclasses.replace(Domain.draw(np.random.default_rng(100 + seed)),
                                     blur_passes=0, partial_volume=1, streaks_hu=0.0)
        domain = dataclasses.replace(domain, zeta_range=(-0.7, 0.2), mimics=(), bias_hu=0.0,
                                     texture_hu=0.0)  # else lesions shift later draws
        sick = render(np.random.default_rng(seed), 16, SIZE, tuple(SUBTYPES), domain=domain)
        well = render(np.random.default_rng(seed), 16, SIZE, (), domain=domain)
        changed = sick.hu != well.hu
        assert sick.domain.skull_base
        checked += int(changed.sum())
        assert not (changed & ((well.hu > 200) | (well.hu < -300))).any()  # bone, air
    assert checked > 0


def _plain(**changes: Any) -> Domain:
    """The classic head without noise or blur, with `changes` (a lesion is then exactly the
    difference between two renders of one seed)."""
    return dataclasses.replace(Domain.classic(), noise_hu=(0.0, 0.0), blur_passes=0, **changes)


def test_aged_subdurals_are_subacute_chronic_or_settled() -> None:
    """Issue 13: a varied subdural is not always acute: about isodense to the cortex,
    hypodense (chronic) or acute cells layered under chronic serum (a hematocrit level)."""
    head = make_head(np.random.default_rng(1), 128, Domain.classic())
    quiet = _Extras((), None, np.zeros(head.u.shape, np.float32), np.random.default_rng(0), 0.0)
    kinds = set()
    for seed in range(20):
        rng = np.random.default_rng(seed)
        aged = age_subdural(rng, LESIONS["subdural"](rng, head), head)
        if aged.serum_hu is not None:
            assert aged.serum_hu < 30 and 45 <= aged.blood_hu
            masks = [(z, aged.shape(make_slice(head, z)))
                     for z in np.linspace(-0.2, 0.8, 21) * float(head.c)]  # fmt: skip
            z, mask = max(((z, m) for z, m in masks if m is not None), key=lambda zm: zm[1].sum())
            hu, _ = _level(head, z, [aged], quiet)
            rows, values = np.nonzero(mask)[0], hu[mask]
            dense, serum = values == np.float32(aged.blood_hu), values == np.float32(aged.serum_hu)
            if dense.any() and serum.any():  # the level crosses this slice: cells lie posterior
                assert rows[dense].mean() > rows[serum].mean()
                kinds.add("settled")
        elif aged.blood_hu < 30:
            kinds.add("chronic")
        else:
            assert head.hu["gray"] + 4 <= aged.blood_hu <= head.hu["gray"] + 16
            kinds.add("subacute")
    assert kinds == {"chronic", "settled", "subacute"}
    domain = _plain(blood_hu=(40.0, 100.0), mixed_clot=0.0, subdural_ages=1.0, visible_hu=8.0)
    shown = [render(np.random.default_rng(seed), 12, 128, ("subdural",), domain=domain).labels
             for seed in range(6)]  # fmt: skip
    assert all(labels[:, LABELS.index("subdural")].any() for labels in shown)


@pytest.mark.parametrize("subtype", ["subarachnoid", "intraventricular"])
def test_patchy_blood_is_part_of_the_whole(subtype: str) -> None:
    whole, patches = (
        render(np.random.default_rng(3), 16, 128, (subtype,),
               domain=_plain(blood_hu=(70.0, 70.0), mixed_clot=0.0, patchy=p))
        for p in (0.0, 1.0)
    )  # fmt: skip
    well = render(np.random.default_rng(3), 16, 128, (),
                  domain=_plain(blood_hu=(70.0, 70.0)))  # fmt: skip
    full, part = whole.hu != well.hu, patches.hu != well.hu
    assert not (part & ~full).any()
    assert 0 < part.sum() < 0.9 * full.sum()


def test_blood_spreads_along_the_falx() -> None:
    """A subarachnoid bleed in the interhemispheric fissure: new blood on the midline."""
    plain, spread = (
        render(np.random.default_rng(8), 16, 128, ("subarachnoid",),
               domain=_plain(blood_hu=(70.0, 70.0), mixed_clot=0.0, spread=s))
        for s in (0.0, 1.0)
    )  # fmt: skip
    added = (spread.hu != plain.hu) & (spread.hu == 70)
    midline = np.abs(np.nonzero(added)[2] - 63.5)  # the classic head is near the centre
    assert added.sum() > 10 and np.median(midline) < 15


def test_labels_follow_what_the_blood_shows() -> None:
    """An isodense clot is no finding on that slice: with `visible_hu` only blood that changes
    the slice by that much is counted; the classic rule counts every pixel of the lesion."""
    flat = {"tissue_hu": (30.0, 30.0, 30.0), "mixed_clot": 0.0}
    column = LABELS.index("epidural")

    def labels(blood: float, visible: float) -> np.ndarray:
        domain = _plain(blood_hu=(blood, blood), visible_hu=visible, **flat)
        return render(np.random.default_rng(2), 16, 128, ("epidural",), domain=domain).labels

    assert labels(30.0, 0.0)[:, column].any()
    assert not labels(30.0, 8.0).any()
    np.testing.assert_array_equal(labels(70.0, 8.0), labels(70.0, 0.0))


def test_a_scalp_hematoma_is_outside_the_skull_and_not_labelled() -> None:
    """Blood density under the scalp: a mimic, drawn outside the cranial cavity."""
    domain = _plain(tissue_hu=(10.0, 5.0, 0.0))  # brain below the scalp's 25-50 HU
    well = render(np.random.default_rng(4), 16, 128, (), domain=domain)
    hematoma = render(np.random.default_rng(4), 16, 128, (),
                      domain=dataclasses.replace(domain, mimics=("scalp_hematoma",)))
    moved = hematoma.hu != well.hu
    assert moved.sum() > 30 and not hematoma.labels.any()
    assert 50 <= hematoma.hu[moved].min() and hematoma.hu[moved].max() <= 80
    before = well.hu[moved]
    assert not ((before > -100) & (before < 20)).any()  # never brain or CSF
    assert (before < -900).any()  # it bulges the skin out into the air
