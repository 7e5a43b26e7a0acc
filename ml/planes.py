"""The image planes of a DICOM CT image, for `ml.volume.assemble`: one per classic instance,
one per frame of a multi-frame (Enhanced CT) instance.

Classic CT Image: Image Plane module (PS3.3 C.7.6.2). Enhanced CT: per frame, Plane Position
(Patient) and Plane Orientation (Patient) from the Per-Frame or Shared Functional Groups
(PS3.3 C.7.6.16.2.3, C.7.6.16.2.4), Pixel Measures (C.7.6.16.2.1), CT Image Frame Type
(C.8.15.3.1) and Frame Content (C.7.6.16.2.2). Only the header is read; a malformed value
leaves that attribute unknown (None), which `assemble` reports.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pydicom.dataset import Dataset

from ml.volume import Plane


def planes_of(ds: Dataset) -> list[Plane]:
    """The planes of `ds`, in stored frame order, frame numbers counted from 1."""
    frames = _int(ds.get("NumberOfFrames")) or 1
    base = Plane(
        sop_instance_uid=str(ds.SOPInstanceUID),
        rows=_int(ds.get("Rows")),
        columns=_int(ds.get("Columns")),
        instance_number=_int(ds.get("InstanceNumber")),
        acquisition_number=_int(ds.get("AcquisitionNumber")),
        number_of_frames=frames,
        image_orientation_patient=_floats(ds.get("ImageOrientationPatient"), 6),
        image_type=_strings(ds.get("ImageType")),
        acquisition_datetime=_acquired(ds),
    )
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    shared = ds.get("SharedFunctionalGroupsSequence")
    if per_frame is not None or shared is not None:
        return [_frame(base, n, per_frame, shared) for n in range(1, frames + 1)]
    if frames > 1:
        # no functional groups: the frames share one plane and cannot be ordered by position
        return [replace(base, frame_number=n) for n in range(1, frames + 1)]
    return [replace(base, image_position_patient=_position(ds.get("ImagePositionPatient")),
                    pixel_spacing=_spacing(ds.get("PixelSpacing")))]


def pixel_spacing_of(ds: Dataset) -> tuple[float, float] | None:
    """PixelSpacing (mm: row spacing, column spacing) of a classic image, or of the first frame
    of a multi-frame one (Pixel Measures, PS3.3 C.7.6.16.2.1); None when absent or malformed."""
    if "PixelSpacing" in ds:
        return _spacing(ds.get("PixelSpacing"))
    for sequence in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        groups = _item(ds.get(sequence), 0)
        measures = _item(groups.get("PixelMeasuresSequence") if groups is not None else None, 0)
        if measures is not None and "PixelSpacing" in measures:
            return _spacing(measures.get("PixelSpacing"))
    return None


def _frame(base: Plane, number: int, per_frame: Any, shared: Any) -> Plane:
    def find(sequence: str, keyword: str) -> Any:
        for groups in (_item(per_frame, number - 1), _item(shared, 0)):
            item = _item(groups.get(sequence) if groups is not None else None, 0)
            if item is not None and keyword in item:
                return item.get(keyword)
        return None

    frame_type = find("CTImageFrameTypeSequence", "FrameType")
    orientation = find("PlaneOrientationSequence", "ImageOrientationPatient")
    acquired = find("FrameContentSequence", "FrameAcquisitionDateTime")
    return replace(
        base,
        frame_number=number,
        image_position_patient=_position(find("PlanePositionSequence", "ImagePositionPatient")),
        image_orientation_patient=(_floats(orientation, 6) if orientation is not None
                                   else base.image_orientation_patient),
        pixel_spacing=_spacing(find("PixelMeasuresSequence", "PixelSpacing")),
        image_type=_strings(frame_type) if frame_type is not None else base.image_type,
        acquisition_datetime=str(acquired) if acquired else base.acquisition_datetime,
    )


def _position(value: Any) -> tuple[float, float, float] | None:
    v = _floats(value, 3)
    return (v[0], v[1], v[2]) if v is not None else None


def _spacing(value: Any) -> tuple[float, float] | None:
    v = _floats(value, 2)
    return (v[0], v[1]) if v is not None else None


def _item(sequence: Any, index: int) -> Dataset | None:
    try:
        return sequence[index] if sequence is not None and len(sequence) > index else None
    except (TypeError, IndexError):
        return None


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, (str, int, float)) else value
    try:
        values = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        return None
    return values if len(values) == n else None


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None and str(value).strip() != "" else None
    except (TypeError, ValueError):
        return None


def _strings(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value)


def _acquired(ds: Dataset) -> str:
    """AcquisitionDateTime, else AcquisitionDate + AcquisitionTime, else ContentDate/Time."""
    if ds.get("AcquisitionDateTime"):
        return str(ds.AcquisitionDateTime)
    for date, time in (("AcquisitionDate", "AcquisitionTime"), ("ContentDate", "ContentTime")):
        if ds.get(time):
            return f"{ds.get(date, '')}{ds.get(time)}"
    return ""
