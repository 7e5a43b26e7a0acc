"""Domain randomization, mimics and the second (polar) phantom style."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from ml.labels import LABELS, SUBTYPES
from ml.phantom import make_volume, write_dataset
from ml.phantoms import polar
from ml.phantoms.anatomy import make_head, make_slice
from ml.phantoms.domain import MIMICS, Domain
from ml.phantoms.render import render
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
    assert seen == set(MIMICS)
    assert sum(bool(d.mimics) for d in draws) > 0.8 * len(draws)


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
