"""ml.volume: one ordered stack per series, and every plane left out said with its reason."""

from __future__ import annotations

import math
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from ml.phantom import write_series
from ml.phantoms.render import render
from ml.planes import planes_of
from ml.volume import (
    Exclusion,
    Plane,
    VolumeRules,
    assemble,
    cavity_area,
    head_area,
    image_type_exclusion,
    slice_position,
)
from tests.shapes import enhanced_ct

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
STEP = 5.0


def axial(n: int = 30, *, start: float = -70.0, step: float = STEP, acquisition: int = 1,
          prefix: str = "1.2.3") -> list[Plane]:
    """n axial planes from `start` upwards, InstanceNumber in position order."""
    return [Plane(f"{prefix}.{k + 1}", image_position_patient=(-100.0, -100.0, start + k * step),
                  image_orientation_patient=AXIAL, pixel_spacing=(0.5, 0.5), rows=512,
                  columns=512, image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
                  acquisition_number=acquisition, instance_number=k + 1)
            for k in range(n)]


def localizer(uid: str, number: int) -> Plane:
    return Plane(uid, image_position_patient=(-250.0, 0.0, 250.0),
                 image_orientation_patient=CORONAL, pixel_spacing=(1.0, 1.0), rows=512,
                 columns=512, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), instance_number=number)


def uids(planes: tuple[Plane, ...] | list[Plane]) -> list[str]:
    return [p.sop_instance_uid for p in planes]


def test_a_whole_series_in_any_order_comes_out_inferior_to_superior() -> None:
    planes = axial()
    shuffled = planes[:]
    random.Random(1).shuffle(shuffled)
    volume = assemble(shuffled)
    assert uids(volume.slices) == uids(planes)
    assert volume.spacing_mm == pytest.approx(STEP)
    assert volume.coverage_mm == pytest.approx(30 * STEP)
    assert volume.complete and not volume.excluded and not volume.gaps
    assert volume.pixel_spacing == (0.5, 0.5) and volume.tilt_deg == 0.0


def test_feet_first_orientation_still_runs_inferior_to_superior() -> None:
    flipped = [replace(p, image_orientation_patient=(-1.0, 0.0, 0.0, 0.0, 1.0, 0.0))
               for p in axial(10)]
    volume = assemble(flipped[::-1], VolumeRules(min_coverage_mm=0))
    assert uids(volume.slices) == uids(flipped)


@pytest.mark.parametrize("where", ["start", "end", "middle"])
def test_a_localizer_anywhere_is_left_out_and_said(where: str) -> None:
    planes = axial()
    scout = localizer("1.2.3.99", {"start": 0, "end": 31, "middle": 15}[where])
    index = {"start": 0, "end": len(planes), "middle": 15}[where]
    volume = assemble([*planes[:index], scout, *planes[index:]])
    assert uids(volume.slices) == uids(planes)
    assert [(e.plane.sop_instance_uid, e.reason) for e in volume.excluded] == [
        ("1.2.3.99", Exclusion.LOCALIZER)]
    assert volume.complete
    assert "1 localizer image(s) left out" in volume.notes()


def test_a_second_localizer_and_one_without_localizer_type_are_both_left_out() -> None:
    planes = axial()
    scouts = [localizer("9.1", 0), localizer("9.2", 40)]
    untyped = replace(localizer("9.3", 41), image_type=("ORIGINAL", "PRIMARY", ""))
    volume = assemble([scouts[0], *planes, scouts[1], untyped])
    assert uids(volume.slices) == uids(planes)
    reasons = {e.plane.sop_instance_uid: e.reason for e in volume.excluded}
    assert reasons == {"9.1": Exclusion.LOCALIZER, "9.2": Exclusion.LOCALIZER,
                       "9.3": Exclusion.OTHER_ORIENTATION}


def test_a_reformat_of_another_type_is_left_out() -> None:
    planes = axial()
    derived = replace(planes[3], sop_instance_uid="8.1",
                      image_type=("DERIVED", "SECONDARY", "AXIAL"))
    volume = assemble([*planes, derived])
    assert uids(volume.slices) == uids(planes)
    assert [e.reason for e in volume.excluded] == [Exclusion.OTHER_IMAGE_TYPE]


def test_a_repeated_slice_replaces_its_position_only() -> None:
    """The issue's row 2: one re-acquired slice must not reorder the series."""
    planes = axial(acquisition=2)
    repeat = replace(planes[9], sop_instance_uid="1.2.3.repeat", acquisition_number=3,
                     instance_number=31)
    volume = assemble([*planes, repeat])
    expected = uids(planes)
    expected[9] = "1.2.3.repeat"
    assert uids(volume.slices) == expected
    (left_out,) = volume.excluded
    assert left_out.plane == planes[9] and left_out.reason == Exclusion.DUPLICATE_POSITION
    assert "kept 1.2.3.repeat" in left_out.detail
    assert volume.complete


def test_an_older_repeat_loses_to_the_later_acquisition_whatever_its_instance_number() -> None:
    planes = axial(acquisition=2)
    older = replace(planes[4], sop_instance_uid="old", acquisition_number=1, instance_number=99)
    volume = assemble([older, *planes])
    assert uids(volume.slices) == uids(planes)
    assert [e.plane.sop_instance_uid for e in volume.excluded] == ["old"]


def test_two_interleaved_acquisitions_make_one_stack() -> None:
    first = axial(15, step=2 * STEP, acquisition=1, prefix="1.1")
    second = axial(15, start=-70.0 + STEP, step=2 * STEP, acquisition=2, prefix="1.2")
    mixed = [p for pair in zip(second, first, strict=True) for p in pair]
    volume = assemble(mixed)
    assert [p.acquisition_number for p in volume.slices] == [1, 2] * 15
    assert volume.spacing_mm == pytest.approx(STEP) and volume.complete


def test_a_full_repeat_acquisition_keeps_only_the_latest() -> None:
    first, second = axial(acquisition=1, prefix="1.1"), axial(acquisition=2, prefix="1.2")
    volume = assemble([*second, *first])
    assert uids(volume.slices) == uids(second)
    assert volume.counts() == {Exclusion.DUPLICATE_POSITION: 30}


@pytest.mark.parametrize(("missing", "gap_after"), [(range(15, 20), 14), (range(1, 3), 0)])
def test_a_gap_inside_the_stack_is_a_problem(missing: range, gap_after: int) -> None:
    planes = [p for k, p in enumerate(axial()) if k not in missing]
    volume = assemble(planes)
    (gap,) = volume.gaps
    assert gap.below == gap_after and gap.missing == len(missing)
    assert gap.distance_mm == pytest.approx((len(missing) + 1) * STEP)
    assert not volume.complete and any("gap of" in p for p in volume.problems)


def test_too_little_coverage_is_a_problem() -> None:
    volume = assemble(axial(12))
    assert volume.coverage_mm == pytest.approx(60.0)
    assert volume.problems == ("covers 60 mm, less than 100 mm",)


def test_a_top_that_does_not_narrow_is_a_cut_off_head() -> None:
    planes = axial()
    z = np.linspace(-0.5, 0.9, len(planes))
    areas = {p.key: 1000.0 * (1 - zz**2) for p, zz in zip(planes, z, strict=True)}
    assert assemble(planes, head_areas=areas).complete
    cut = planes[:20]  # the top of the head missing: no gap, enough coverage
    volume = assemble(cut, head_areas={p.key: areas[p.key] for p in cut})
    assert not volume.gaps and volume.coverage_mm >= 100
    assert [p for p in volume.problems if p.startswith("head cut off below the vertex")]


def test_irregular_spacing_is_noted_not_a_problem() -> None:
    planes = axial()
    wobbly = [replace(p, image_position_patient=(-100.0, -100.0, -70.0 + k * STEP + (k % 2)))
              for k, p in enumerate(planes)]
    volume = assemble(wobbly)
    assert volume.irregular_spacing and not volume.gaps and volume.complete
    assert "irregular slice spacing" in volume.notes()


def test_gantry_tilt_is_measured() -> None:
    tilt = math.radians(15)
    orientation = (1.0, 0.0, 0.0, 0.0, math.cos(tilt), -math.sin(tilt))
    planes = [replace(p, image_orientation_patient=orientation) for p in axial()]
    volume = assemble(planes)
    assert volume.tilt_deg == pytest.approx(15.0, abs=0.01)
    assert "gantry tilt 15.0 deg" in volume.notes()
    # positions along the tilted normal: the step along it is cos(tilt) of the table's
    assert volume.spacing_mm == pytest.approx(STEP * math.cos(tilt))


def test_missing_positions_and_undecodable_planes_are_said() -> None:
    planes = axial()
    planes[3] = replace(planes[3], image_position_patient=None)
    volume = assemble(planes, undecodable={planes[7].key: "JPEG 2000 stream truncated"})
    reasons = {e.plane.sop_instance_uid: (e.reason, e.detail) for e in volume.excluded}
    assert reasons == {"1.2.3.4": (Exclusion.NO_POSITION, ""),
                       "1.2.3.8": (Exclusion.UNDECODABLE, "JPEG 2000 stream truncated")}
    assert "1 slice(s) could not be read" in volume.problems


def test_a_series_of_only_localizers_has_no_volume() -> None:
    volume = assemble([localizer("9.1", 1), localizer("9.2", 2)])
    assert volume.slices == () and not volume.complete and not volume.triageable
    assert volume.problems[0] == "0 usable slice(s), fewer than 8"
    assert not assemble([]).triageable and assemble([]).problems == ("no images",)


def test_a_minority_matrix_is_left_out() -> None:
    planes = axial()
    planes[2] = replace(planes[2], rows=256, columns=256)
    volume = assemble(planes)
    assert [e.reason for e in volume.excluded] == [Exclusion.OTHER_MATRIX]


def test_a_plane_given_twice_is_refused() -> None:
    planes = axial(3)
    with pytest.raises(ValueError, match="appears twice"):
        assemble([*planes, planes[0]])


@pytest.mark.parametrize(("image_type", "expected"), [
    (("ORIGINAL", "PRIMARY", "AXIAL"), None),
    (("ORIGINAL", "PRIMARY", "VOLUME", "NONE"), None),
    (("ORIGINAL", "PRIMARY", "LOCALIZER"), Exclusion.LOCALIZER),
    (("DERIVED", "SECONDARY", "AXIAL"), Exclusion.OTHER_IMAGE_TYPE),
    (("ORIGINAL", "PRIMARY", "REFORMATTED"), Exclusion.OTHER_IMAGE_TYPE),
    ((), None),
])
def test_image_type_rules(image_type: tuple[str, ...], expected: Exclusion | None) -> None:
    assert image_type_exclusion(image_type) == expected


def test_planes_of_a_phantom_series_match_its_files(tmp_path: Path) -> None:
    series = write_series(tmp_path, seed=11, slices=6, size=32)
    planes = [planes_of(dcmread(p, stop_before_pixels=True))[0] for p in series.paths]
    assert uids(planes) == list(series.sop_uids)
    assert all(p.frame_number == 1 and p.image_orientation_patient == AXIAL for p in planes)
    volume = assemble(planes[::-1], VolumeRules(min_slices=6))
    assert uids(volume.slices) == list(series.sop_uids)


def test_head_area_counts_pixels_above_air() -> None:
    hu = np.full((4, 4), -1000.0)
    hu[1:3, 1:3] = 40.0
    assert head_area(hu) == 4.0


def test_enhanced_ct_frames_in_any_stored_order_come_out_by_position(tmp_path: Path) -> None:
    series = write_series(tmp_path / "in", seed=12, slices=8, size=32)
    order = [5, 2, 7, 0, 3, 6, 1, 4]
    ds = dcmread(enhanced_ct(series.paths, tmp_path / "out", order=order))
    planes = planes_of(ds)
    assert [p.frame_number for p in planes] == list(range(1, 9))
    assert {p.sop_instance_uid for p in planes} == {str(ds.SOPInstanceUID)}
    assert all(p.image_orientation_patient == AXIAL and p.pixel_spacing for p in planes)
    volume = assemble(planes, VolumeRules(min_slices=8))
    # frame f holds slice order[f - 1]: by position, slice k is frame order.index(k) + 1
    assert [p.frame_number for p in volume.slices] == [order.index(k) + 1 for k in range(8)]
    assert volume.complete and not volume.excluded


@pytest.mark.parametrize("orientation", [AXIAL, (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0)])
def test_slice_position_orders_as_assemble_does(orientation: tuple[float, ...]) -> None:
    """Training orders cached slices by slice_position: the node's order, feet first too."""
    planes = [replace(p, image_orientation_patient=orientation) for p in axial(12)]
    shuffled = planes[::-1]
    by_key = sorted(shuffled, key=lambda p: slice_position(p.image_position_patient or (),
                                                           orientation) or 0.0)
    assert uids(by_key) == uids(assemble(shuffled).slices) == uids(planes)
    assert slice_position((0.0, 0.0, 1.0), (1.0, 0.0, 0.0)) is None


def test_an_unread_plane_whose_position_another_image_fills_is_not_a_problem() -> None:
    planes = axial(acquisition=1)
    newer = replace(planes[5], sop_instance_uid="newer", acquisition_number=2)
    volume = assemble([*planes, newer], undecodable={newer.key: "truncated"})
    assert uids(volume.slices) == uids(planes)
    assert volume.counts() == {Exclusion.UNDECODABLE: 1} and volume.complete


def test_a_coronal_stack_is_not_triageable() -> None:
    coronal = [replace(p, image_orientation_patient=CORONAL,
                       image_position_patient=(-100.0, -70.0 + k * STEP, 100.0),
                       image_type=("ORIGINAL", "PRIMARY")) for k, p in enumerate(axial())]
    volume = assemble(coronal)
    assert not volume.axial and not volume.triageable and not volume.complete
    assert volume.problems[0].startswith("not an axial stack (slice normal 90 deg")
    assert assemble(axial()).triageable and not assemble(axial(3)).triageable


def test_thin_slices_are_not_taken_for_duplicates() -> None:
    planes = axial(1500, step=0.1)  # 0.1 mm apart, positions with float rounding
    volume = assemble(planes[::-1])
    assert uids(volume.slices) == uids(planes) and not volume.excluded
    assert volume.spacing_mm == pytest.approx(0.1) and volume.complete


def test_a_bottom_with_most_of_the_brain_is_a_head_cut_off_above_the_skull_base() -> None:
    planes = axial()
    z = np.linspace(-0.6, 0.9, len(planes))
    areas = {p.key: 1000.0 * max(0.05, 1 - ((zz - 0.1) / 0.7) ** 2)
             for p, zz in zip(planes, z, strict=True)}
    assert assemble(planes, cavity_areas=areas).complete
    cut = planes[8:]  # the posterior fossa and skull base missing: no gap, enough coverage
    volume = assemble(cut, cavity_areas={p.key: areas[p.key] for p in cut})
    assert not volume.gaps and volume.coverage_mm >= 100
    assert [p for p in volume.problems if p.startswith("head cut off above the skull base")]


@pytest.mark.parametrize("style", ["classic", "randomized"])
def test_cavity_area_of_phantoms_from_the_skull_base_and_cut_above_it(style: str) -> None:
    """Rendered heads: the full stack passes; without its lowest third it is flagged."""
    rendered = render(np.random.default_rng(3), 24, 256, (), randomize=style == "randomized",
                      domain=None)
    fractions = [cavity_area(hu.astype(np.float32)) for hu in rendered.hu]
    widest = max(fractions)
    assert fractions[0] <= 0.8 * widest  # the stack starts at the skull base
    third = len(fractions) // 3
    assert fractions[third] > 0.8 * widest  # it would be flagged had it started there
    hu = np.full((64, 64), -1000.0)
    hu[8:56, 8:56] = 1000.0  # a closed skull
    hu[12:52, 12:52] = 35.0  # and the brain inside
    assert cavity_area(hu) == 100.0  # 40 x 40 pixels, counted on every 4th both ways
