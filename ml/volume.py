"""A series' images as one ordered volume: the slices the model reads, and what was left out.

This is the one place that orders slices. From the image planes of a series (one per classic
CT instance, one per frame of an Enhanced CT instance) `assemble` keeps the axial slices of the
series' own orientation, resolves duplicate positions by position, orders the rest along the
slice normal (inferior to superior) and measures the stack: spacing, gaps, irregular spacing,
gantry tilt and coverage. It never reorders by InstanceNumber: the order comes from
ImagePositionPatient (PS3.3 C.7.6.2.1.1) or, for multi-frame images, from each frame's Plane
Position (Patient) (PS3.3 C.7.6.16.2.3).

`problems` lists why a negative result on the stack would not be trustworthy (a gap, too little
coverage, unread slices); `excluded` lists each plane left out and why. `planes_of` reads the
planes of one pydicom dataset (header only; pixel data is not needed).
"""

from __future__ import annotations

import enum
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

PlaneKey = tuple[str, int]  # (SOPInstanceUID, frame number counted from 1)
_TOO_FEW = "usable slice(s)"


class Exclusion(enum.StrEnum):
    """Why an image plane is not part of the volume."""

    UNDECODABLE = "undecodable"  # header or pixel data cannot be read
    NO_POSITION = "no position"  # ImagePositionPatient or ImageOrientationPatient missing or bad
    LOCALIZER = "localizer"  # ImageType / FrameType value 3 LOCALIZER (PS3.3 C.8.2.1.1.1)
    OTHER_IMAGE_TYPE = "other image type"  # not ORIGINAL, or not AXIAL where the type says
    OTHER_ORIENTATION = "other orientation"  # not parallel to the series' main orientation
    OTHER_MATRIX = "other matrix"  # Rows x Columns differ from the series' main size
    DUPLICATE_POSITION = "duplicate position"  # same plane as a later acquisition's image


def image_type_exclusion(image_type: Sequence[str]) -> Exclusion | None:
    """LOCALIZER, OTHER_IMAGE_TYPE or None for ImageType (or FrameType) values.

    Value 1 must be ORIGINAL; value 3, where present and not empty, AXIAL for CT Image
    (PS3.3 C.8.2.1.1.1) or VOLUME, the Image Flavor of Enhanced CT images and frames
    (C.8.16.1.3); the orientation itself is checked from the geometry. An empty type is not
    judged.
    """
    values = [v.strip().upper() for v in image_type]
    if not values or not any(values):
        return None
    if "LOCALIZER" in values:
        return Exclusion.LOCALIZER
    if values[0] != "ORIGINAL":
        return Exclusion.OTHER_IMAGE_TYPE
    if len(values) > 2 and values[2] not in ("AXIAL", "VOLUME", ""):
        return Exclusion.OTHER_IMAGE_TYPE
    return None


@dataclass(frozen=True)
class Plane:
    """One image plane of a series, as its header describes it (DICOM keywords, snake_case)."""

    sop_instance_uid: str
    frame_number: int = 1  # 1-based, as ReferencedFrameNumber (PS3.3 C.7.6.1.1.5)
    image_position_patient: tuple[float, float, float] | None = None  # mm, LPS
    image_orientation_patient: tuple[float, ...] | None = None  # six direction cosines
    pixel_spacing: tuple[float, float] | None = None  # mm: row spacing, column spacing
    rows: int | None = None
    columns: int | None = None
    image_type: tuple[str, ...] = ()
    acquisition_number: int | None = None
    acquisition_datetime: str = ""  # DT, comparable as text when in the same format
    instance_number: int | None = None
    number_of_frames: int = 1  # of the instance the plane belongs to

    @property
    def key(self) -> PlaneKey:
        return (self.sop_instance_uid, self.frame_number)


@dataclass(frozen=True)
class Excluded:
    plane: Plane
    reason: Exclusion
    detail: str = ""


@dataclass(frozen=True)
class Gap:
    """Missing slices between slices `below` and `below + 1` of the volume."""

    below: int
    distance_mm: float
    missing: int  # slices the nominal spacing would have put there


@dataclass(frozen=True)
class VolumeRules:
    """What makes a stack of slices a volume fit for a confident result; the defaults suit a
    head CT (skull base to vertex, 130-160 mm)."""

    min_slices: int = 8
    min_coverage_mm: float = 100.0
    orientation_tolerance_deg: float = 2.0  # normals further apart are another orientation
    duplicate_tolerance_mm: float = 0.05  # positions closer along the normal: the same plane
    gap_factor: float = 1.5  # a step this many times the nominal spacing is a gap
    irregular_fraction: float = 0.1  # steps further than this from the nominal are irregular
    tilt_note_deg: float = 0.5  # gantry tilt below this is not reported
    max_axial_deg: float = 35.0  # slice normals further from the patient's z axis: not axial
    head_min_hu: float = -300.0  # pixels above this count as the head (not air)
    max_top_area_fraction: float = 0.5  # the top slice of a head that reaches the vertex
    bone_min_hu: float = 300.0  # the skull: what encloses the cranial cavity
    max_bottom_cavity_fraction: float = 0.8  # the bottom slice of a head from its skull base

    def __post_init__(self) -> None:
        if self.min_slices < 1:
            raise ValueError(f"min_slices: must be >= 1, got {self.min_slices}")
        for name in ("min_coverage_mm", "orientation_tolerance_deg", "duplicate_tolerance_mm",
                     "tilt_note_deg", "max_axial_deg"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if self.gap_factor <= 1:
            raise ValueError(f"gap_factor: must be > 1, got {self.gap_factor}")
        for name in ("max_top_area_fraction", "max_bottom_cavity_fraction"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name}: must be in (0, 1], got {getattr(self, name)}")


@dataclass(frozen=True)
class Volume:
    """The ordered stack and what `assemble` found about it."""

    slices: tuple[Plane, ...]  # inferior to superior
    positions_mm: tuple[float, ...]  # of each slice along the stacking axis
    excluded: tuple[Excluded, ...]
    spacing_mm: float | None  # nominal (median) step between slices
    gaps: tuple[Gap, ...] = ()
    irregular_spacing: bool = False
    tilt_deg: float = 0.0  # angle between the slice normal and the stacking axis
    coverage_mm: float = 0.0  # from the first to the last slice, plus one step
    pixel_spacing: tuple[float, float] | None = None
    problems: tuple[str, ...] = field(default=())
    axial: bool = True  # the slices are axial (within `max_axial_deg`), as the model reads

    @property
    def triageable(self) -> bool:
        """Enough axial slices for the model to read at all (a result may still be
        provisional: see `complete`)."""
        return self.axial and bool(self.slices) and not any(_TOO_FEW in p for p in self.problems)

    @property
    def complete(self) -> bool:
        """True when nothing stands in the way of a confident result, negative included."""
        return not self.problems

    def counts(self) -> dict[Exclusion, int]:
        return dict(Counter(e.reason for e in self.excluded))

    def notes(self) -> list[str]:
        """Short lines for people: what was left out, then the stack's problems and quirks."""
        lines = [f"{n} {reason.value} image(s) left out" for reason, n in self.counts().items()]
        lines += list(self.problems)
        if self.irregular_spacing and not self.gaps:
            lines.append("irregular slice spacing")
        if self.tilt_deg:
            lines.append(f"gantry tilt {self.tilt_deg:.1f} deg")
        return lines


def assemble(planes: Sequence[Plane], rules: VolumeRules | None = None, *,
             undecodable: Mapping[PlaneKey, str] | None = None,
             head_areas: Mapping[PlaneKey, float] | None = None,
             cavity_areas: Mapping[PlaneKey, float] | None = None) -> Volume:
    """Order `planes` into a volume (see the module's docstring).

    `undecodable` maps planes whose header or pixels could not be read to the reason;
    `head_areas` (pixels of the head per plane, e.g. from `head_area`), when given, lets the
    top of the stack be checked for the vertex; `cavity_areas` (from `cavity_area`) the
    bottom for the skull base. Raises ValueError if a plane appears twice.
    """
    rules = rules or VolumeRules()
    undecodable = undecodable or {}
    if len({p.key for p in planes}) != len(planes):
        raise ValueError("planes: a (SOPInstanceUID, frame number) appears twice")
    excluded: list[Excluded] = []
    kept = _first_pass(planes, undecodable, excluded)
    kept = _main_orientation(kept, rules, excluded)
    kept = _main_matrix(kept, excluded)
    if not kept:
        return Volume((), (), tuple(excluded), None,
                      problems=_problems_of_empty(planes, excluded, rules))
    axis = _stacking_axis(kept)
    kept, positions = _deduplicated(kept, axis, rules, excluded)
    return _measured(kept, positions, axis, rules, excluded, head_areas, cavity_areas)


def _first_pass(planes: Sequence[Plane], undecodable: Mapping[PlaneKey, str],
                excluded: list[Excluded]) -> list[Plane]:
    kept = []
    for plane in planes:
        if plane.key in undecodable:
            excluded.append(Excluded(plane, Exclusion.UNDECODABLE, undecodable[plane.key]))
        elif (reason := image_type_exclusion(plane.image_type)) is not None:
            excluded.append(Excluded(plane, reason, "\\".join(plane.image_type)))
        elif plane.image_position_patient is None or _normal(plane) is None:
            excluded.append(Excluded(plane, Exclusion.NO_POSITION))
        else:
            kept.append(plane)
    return kept


def _normal(plane: Plane) -> np.ndarray | None:
    cosines = plane.image_orientation_patient
    if cosines is None or len(cosines) != 6 or not all(map(math.isfinite, cosines)):
        return None
    normal = np.cross(np.asarray(cosines[:3]), np.asarray(cosines[3:]))
    length = float(np.linalg.norm(normal))
    return normal / length if length > 0.5 else None


def _main_orientation(planes: list[Plane], rules: VolumeRules,
                      excluded: list[Excluded]) -> list[Plane]:
    """The planes parallel to the orientation most planes share (a normal or its opposite)."""
    if not planes:
        return planes
    normals = np.array([_normal(p) for p in planes], dtype=float)  # (n, 3), none missing here
    limit = math.cos(math.radians(rules.orientation_tolerance_deg))
    # distinct normals (to 1e-3), each supported by every plane parallel to it
    distinct, counts = np.unique(np.round(normals, 3), axis=0, return_counts=True)
    support = (np.abs(distinct @ distinct.T) >= limit) @ counts
    main = distinct[int(np.argmax(support))]
    main /= np.linalg.norm(main)
    cosines = np.abs(normals @ main)
    kept = []
    for plane, cosine in zip(planes, cosines, strict=True):
        if cosine >= limit:
            kept.append(plane)
        else:
            angle = math.degrees(math.acos(min(1.0, float(cosine))))
            excluded.append(Excluded(plane, Exclusion.OTHER_ORIENTATION,
                                     f"{angle:.0f} deg from the series' slices"))
    return kept


def _main_matrix(planes: list[Plane], excluded: list[Excluded]) -> list[Plane]:
    if not planes:
        return planes
    sizes = Counter((p.rows, p.columns) for p in planes)
    main, _ = sizes.most_common(1)[0]
    kept = []
    for plane in planes:
        if (plane.rows, plane.columns) == main:
            kept.append(plane)
        else:
            excluded.append(Excluded(plane, Exclusion.OTHER_MATRIX,
                                     f"{plane.rows}x{plane.columns}, not {main[0]}x{main[1]}"))
    return kept


def _stacking_axis(planes: list[Plane]) -> np.ndarray:
    """The slice normal of the main orientation, turned to point superior (+z in LPS)."""
    normal = _normal(planes[0])
    assert normal is not None
    return -normal if normal[2] < 0 else normal


def slice_position(image_position_patient: Sequence[float],
                   image_orientation_patient: Sequence[float]) -> float | None:
    """mm along the slice normal turned superior: the key `assemble` orders slices by (so
    training, which orders cached slices by it, sees them in the node's order). None when
    the orientation is not six usable direction cosines."""
    plane = Plane("", image_position_patient=tuple(image_position_patient),  # type: ignore[arg-type]
                  image_orientation_patient=tuple(image_orientation_patient))
    if len(image_position_patient) != 3 or _normal(plane) is None:
        return None
    return float(np.dot(np.asarray(image_position_patient, float), _stacking_axis([plane])))


def _recency(plane: Plane) -> tuple[int, str, int, int]:
    return (plane.acquisition_number if plane.acquisition_number is not None else -1,
            plane.acquisition_datetime,
            plane.instance_number if plane.instance_number is not None else -1,
            plane.frame_number)


def _deduplicated(planes: list[Plane], axis: np.ndarray, rules: VolumeRules,
                  excluded: list[Excluded]) -> tuple[list[Plane], list[float]]:
    """Planes sorted along `axis`; of planes at one position, the latest acquisition's."""
    at = [float(np.dot(np.asarray(p.image_position_patient), axis)) for p in planes]
    order = sorted(range(len(planes)), key=lambda i: (at[i], planes[i].sop_instance_uid,
                                                       planes[i].frame_number))
    groups: list[list[int]] = []
    for i in order:
        if groups and at[i] - at[groups[-1][0]] <= rules.duplicate_tolerance_mm:
            groups[-1].append(i)
        else:
            groups.append([i])
    kept, positions = [], []
    for group in groups:
        latest = max(group, key=lambda i: _recency(planes[i]))
        kept.append(planes[latest])
        positions.append(at[latest])
        for i in group:
            if i != latest:
                excluded.append(Excluded(planes[i], Exclusion.DUPLICATE_POSITION,
                                         f"kept {planes[latest].sop_instance_uid} "
                                         f"frame {planes[latest].frame_number}"))
    return kept, positions


def _measured(slices: list[Plane], positions: list[float], axis: np.ndarray,
              rules: VolumeRules, excluded: list[Excluded],
              head_areas: Mapping[PlaneKey, float] | None,
              cavity_areas: Mapping[PlaneKey, float] | None = None) -> Volume:
    steps = np.diff(np.asarray(positions))
    spacing = float(np.median(steps)) if len(steps) else None
    gaps: list[Gap] = []
    irregular = False
    if spacing:
        for i, step in enumerate(steps):
            if step > rules.gap_factor * spacing:
                gaps.append(Gap(i, float(step), max(1, round(step / spacing) - 1)))
            if abs(step - spacing) > rules.irregular_fraction * spacing:
                irregular = True
    coverage = (positions[-1] - positions[0]) + (spacing or 0.0)
    tilt = _tilt(slices, axis)
    unread = _unread_uncovered(excluded, axis, positions, rules)
    problems = _problems(len(slices), coverage, gaps, unread, rules)
    from_z = math.degrees(math.acos(min(1.0, abs(float(axis[2])))))
    axial = from_z <= rules.max_axial_deg
    if not axial:
        problems.insert(0, f"not an axial stack (slice normal {from_z:.0f} deg from the "
                           f"patient's head-foot axis)")
    if head_areas is not None and (top := _top_of_head_problem(slices, head_areas, rules)):
        problems.append(top)
    if cavity_areas is not None and (
            bottom := _bottom_of_head_problem(slices, cavity_areas, rules)):
        problems.append(bottom)
    return Volume(
        slices=tuple(slices), positions_mm=tuple(positions), excluded=tuple(excluded),
        spacing_mm=spacing, gaps=tuple(gaps), irregular_spacing=irregular,
        tilt_deg=tilt if tilt >= rules.tilt_note_deg else 0.0, coverage_mm=coverage,
        pixel_spacing=slices[0].pixel_spacing, problems=tuple(problems), axial=axial)


def _tilt(slices: list[Plane], axis: np.ndarray) -> float:
    if len(slices) < 2:
        return 0.0
    first, last = (np.asarray(p.image_position_patient) for p in (slices[0], slices[-1]))
    direction = last - first
    length = float(np.linalg.norm(direction))
    if length == 0:
        return 0.0
    return math.degrees(math.acos(min(1.0, abs(float(np.dot(direction / length, axis))))))


def _unread_uncovered(excluded: list[Excluded], axis: np.ndarray, positions: list[float],
                      rules: VolumeRules) -> int:
    """Unread planes whose place no slice of the volume takes (another acquisition's image
    at the same position stands in for an unread one)."""
    count = 0
    for item in excluded:
        if item.reason != Exclusion.UNDECODABLE:
            continue
        plane = item.plane
        if plane.image_position_patient is not None and _normal(plane) is not None:
            at = float(np.dot(np.asarray(plane.image_position_patient), axis))
            if any(abs(at - p) <= rules.duplicate_tolerance_mm for p in positions):
                continue
        count += 1
    return count


def _problems(n: int, coverage: float, gaps: list[Gap], unread: int,
              rules: VolumeRules) -> list[str]:
    problems = []
    if n < rules.min_slices:
        problems.append(f"{n} {_TOO_FEW}, fewer than {rules.min_slices}")
    for gap in gaps:
        problems.append(f"gap of {gap.distance_mm:.1f} mm above slice {gap.below + 1} "
                        f"(about {gap.missing} slice(s) missing)")
    if coverage < rules.min_coverage_mm:
        problems.append(f"covers {coverage:.0f} mm, less than {rules.min_coverage_mm:.0f} mm")
    if unread:
        problems.append(f"{unread} slice(s) could not be read")
    return problems


def _problems_of_empty(planes: Sequence[Plane], excluded: list[Excluded],
                       rules: VolumeRules) -> tuple[str, ...]:
    if not planes:
        return ("no images",)
    unread = sum(e.reason == Exclusion.UNDECODABLE for e in excluded)
    return tuple(_problems(0, 0.0, [], unread, rules))


def head_area(hu: np.ndarray, rules: VolumeRules | None = None) -> float:
    """Pixels of one (rows, cols) HU slice above `rules.head_min_hu`: the head's cross-section."""
    rules = rules or VolumeRules()
    return float(np.count_nonzero(np.asarray(hu) > rules.head_min_hu))


def cavity_area(hu: np.ndarray, rules: VolumeRules | None = None) -> float:
    """Pixels of brain and CSF (-20 to 100 HU) enclosed by the skull (`rules.bone_min_hu`)
    on one (rows, cols) HU slice, counted on every 4th pixel both ways (mm-sized cells are
    enough for a fraction). Near the skull base the cavity is a few islands among bone, air
    and orbits; above it, most of the section."""
    rules = rules or VolumeRules()
    cells = np.asarray(hu)[::4, ::4]
    bone = cells > rules.bone_min_hu
    inside = ndimage.binary_fill_holes(bone) & ~bone
    return float(np.count_nonzero(inside & (cells > -20) & (cells < 100)))


def _bottom_of_head_problem(slices: list[Plane], cavity_areas: Mapping[PlaneKey, float],
                            rules: VolumeRules) -> str | None:
    """A head scanned from its skull base has little cranial cavity on its lowest slice; a
    stack that starts higher up (the posterior fossa left out) has nearly all of it."""
    areas = [cavity_areas.get(p.key) for p in slices]
    if len(areas) < 3 or any(a is None for a in areas):
        return None
    largest = max(a for a in areas if a is not None)
    bottom = areas[0]
    assert bottom is not None
    if largest > 0 and bottom > rules.max_bottom_cavity_fraction * largest:
        return (f"head cut off above the skull base (bottom slice holds {bottom / largest:.0%} "
                f"of the widest brain section)")
    return None


def _top_of_head_problem(slices: list[Plane], head_areas: Mapping[PlaneKey, float],
                         rules: VolumeRules) -> str | None:
    """A head that reaches the vertex narrows at the top; a cut-off stack does not."""
    areas = [head_areas.get(p.key) for p in slices]
    if len(areas) < 3 or any(a is None for a in areas):
        return None
    largest = max(a for a in areas if a is not None)
    top = areas[-1]
    assert top is not None
    if largest > 0 and top > rules.max_top_area_fraction * largest:
        return (f"head cut off below the vertex (top slice {top / largest:.0%} of the widest "
                f"head section)")
    return None
