"""Real-world series shapes built on the project's phantoms (issue 12): a localizer inside the
series, a re-acquired slice, an Enhanced CT with frames in another order, missing slices."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import EnhancedCTImageStorage, ExplicitVRLittleEndian, generate_uid


def restamp(paths: Sequence[Path], out: Path, tag: str) -> list[Path]:
    """Copies of `paths` in `out` with Study, Series and SOP Instance UIDs derived from `tag`:
    another study with the same images, so shapes of one phantom can go to one node."""
    out.mkdir(parents=True, exist_ok=True)
    copies = []
    for path in paths:
        ds = dcmread(path)
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            setattr(ds, keyword, generate_uid(entropy_srcs=[tag, str(ds[keyword].value)]))
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientID = f"{ds.PatientID}-{tag}"[:64]
        copy = out / path.name
        ds.save_as(copy, enforce_file_format=True)
        copies.append(copy)
    return copies


def set_patient_name(paths: Sequence[Path], name: str, *, declared: str | None,
                     encoding: str, written: str | None = None) -> bytes:
    """PatientName encoded in `encoding`, under Specific Character Set `declared` (None:
    absent) as the header says it, and `written` as it is spelt in the file (a misspelling);
    returns the name's bytes."""
    raw = name.encode(encoding)
    for path in paths:
        ds = dcmread(path)
        if "SpecificCharacterSet" in ds:
            del ds.SpecificCharacterSet
        ds.PatientName = raw.decode("latin-1")  # written back byte for byte (no charset)
        if declared is not None:
            ds.SpecificCharacterSet = "ISO_IR 100"  # a placeholder of the same length
        ds.save_as(path, enforce_file_format=True)
        if declared is not None:
            data = path.read_bytes()
            term = (written or declared).encode().ljust(10)
            assert len(term) == 10, "terms of the placeholder's length only"
            path.write_bytes(data.replace(b"ISO_IR 100", term, 1))
    return raw


def by_position(paths: Sequence[Path]) -> list[Path]:
    """Paths of a classic axial series, inferior to superior (the phantoms' order)."""
    return sorted(paths, key=lambda p: float(dcmread(p, stop_before_pixels=True)
                                             .ImagePositionPatient[2]))


def interleave(paths: Sequence[Path]) -> None:
    """Two interleaved acquisitions: even slices acquisition 1, odd slices acquisition 2, each
    numbered from 1, so InstanceNumber order is not position order."""
    for k, path in enumerate(by_position(paths)):
        ds = dcmread(path)
        ds.AcquisitionNumber = 1 + k % 2
        ds.InstanceNumber = k // 2 + 1
        ds.save_as(path, enforce_file_format=True)

# Per-slice attributes of the classic CT Image that an Enhanced CT keeps per frame instead
_PER_FRAME = ("ImagePositionPatient", "SliceLocation", "InstanceNumber", "WindowCenter",
              "WindowWidth", "WindowCenterWidthExplanation", "RescaleIntercept", "RescaleSlope",
              "RescaleType", "ImageOrientationPatient", "PixelSpacing", "SliceThickness")


def add_localizer(paths: Sequence[Path], out: Path, *, number: int = 0) -> Path:
    """A coronal scout (ImageType ...\\LOCALIZER) in the same series, as a scanner sends it."""
    ds = dcmread(paths[0])
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    ds.ImagePositionPatient = [-115.0, 0.0, 90.0]
    ds.InstanceNumber = number
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"scout-{number}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def add_repeat(paths: Sequence[Path], index: int, out: Path) -> Path:
    """Slice `index` (in position order) re-acquired: same position, a later AcquisitionNumber,
    a new UID and the series' highest InstanceNumber; the other slices become acquisition 2."""
    for path in paths:
        ds = dcmread(path)
        ds.AcquisitionNumber = 2
        ds.save_as(path, enforce_file_format=True)
    ds = dcmread(by_position(paths)[index])
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.AcquisitionNumber = 3
    ds.InstanceNumber = len(paths) + 1
    out.mkdir(parents=True, exist_ok=True)
    path = out / "repeat.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _functional_group(**items: Dataset) -> Dataset:
    group = Dataset()
    for keyword, item in items.items():
        setattr(group, keyword, DicomSequence([item]))
    return group


def _item(**values: object) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def enhanced_ct(paths: Sequence[Path], out: Path, *, order: Sequence[int]) -> Path:
    """One Enhanced CT Image (PS3.3 A.38) of the slices at `paths`, frames stored in `order`
    (indices into `paths`), each frame with its own Plane Position and Frame Content."""
    slices = [dcmread(p) for p in paths]
    first = slices[0]
    ds = Dataset()
    for element in first:
        if element.keyword not in _PER_FRAME and element.keyword != "PixelData":
            ds.add(element)
    uid = generate_uid()
    ds.SOPClassUID = EnhancedCTImageStorage
    ds.SOPInstanceUID = uid
    ds.InstanceNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.NumberOfFrames = len(order)
    ds.ContentQualification = "RESEARCH"
    ds.SharedFunctionalGroupsSequence = DicomSequence([_functional_group(
        PixelMeasuresSequence=_item(PixelSpacing=first.PixelSpacing,
                                    SliceThickness=first.SliceThickness),
        PlaneOrientationSequence=_item(ImageOrientationPatient=first.ImageOrientationPatient),
        PixelValueTransformationSequence=_item(RescaleIntercept=first.RescaleIntercept,
                                               RescaleSlope=first.RescaleSlope,
                                               RescaleType="HU"),
        CTImageFrameTypeSequence=_item(FrameType=["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]),
    )])
    ds.PerFrameFunctionalGroupsSequence = DicomSequence([_functional_group(
        PlanePositionSequence=_item(ImagePositionPatient=slices[k].ImagePositionPatient),
        FrameContentSequence=_item(DimensionIndexValues=[k + 1], StackID="1",
                                   InStackPositionNumber=k + 1),
    ) for k in order])
    pixels = [slices[k].pixel_array for k in order]
    ds.PixelData = np.stack(pixels).astype(pixels[0].dtype).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out.mkdir(parents=True, exist_ok=True)
    path = out / "enhanced.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path
