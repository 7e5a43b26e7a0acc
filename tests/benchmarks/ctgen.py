"""Synthetic CT series for the receive benchmark and the peer smoke tests.

Files are CT Image Storage (PS3.3 A.3) in Explicit VR Little Endian, one study and one series,
with the Type 1/2 attributes of the Patient, Study, Series, Frame of Reference, Equipment,
General/CT Image, Image Plane, Image Pixel and SOP Common modules filled in. The pixels are
random-ish HU-like content (air around a water-like head with a bony rim), not anatomy.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

RESCALE_INTERCEPT = -1024.0
SLICE_THICKNESS_MM = 5.0


def _phantom_hu(size: int, z: float, rng: np.random.Generator) -> np.ndarray:
    """An ellipse of brain-like HU in a skull rim, in air, with noise; z in [0, 1] shrinks it."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c = (size - 1) / 2.0
    scale = 0.80 - 0.35 * abs(z - 0.5)
    ry, rx = c * scale, c * scale * 0.82
    r = ((yy - c) / ry) ** 2 + ((xx - c) / rx) ** 2
    hu = np.full((size, size), -1000.0, dtype=np.float32)
    hu[r <= 1.0] = 1000.0  # bone rim
    hu[r <= 0.88] = 35.0  # brain-like tissue
    hu += rng.normal(0.0, 6.0, size=(size, size)).astype(np.float32)
    return hu


def _base_dataset(study_uid: str, series_uid: str, frame_uid: str, size: int) -> Dataset:
    now = dt.datetime.now()
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.AccessionNumber = "BENCH0001"
    ds.Modality = "CT"
    ds.Manufacturer = "ichtriage-bench"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CT HEAD WO CONTRAST"
    ds.SeriesDescription = "AXIAL 5mm"
    ds.PatientName = "BENCH^SYNTHETIC"
    ds.PatientID = "BENCH-0001"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.BodyPartExamined = "HEAD"
    ds.SliceThickness = SLICE_THICKNESS_MM
    ds.KVP = 120
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 2
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.488281, 0.488281]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = size
    ds.Columns = size
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = RESCALE_INTERCEPT
    ds.RescaleSlope = 1.0
    ds.RescaleType = "HU"
    ds.WindowCenter = 40
    ds.WindowWidth = 80
    ds.AcquisitionNumber = 1
    return ds


def write_ct_series(out_dir: Path, n: int, *, size: int = 512, seed: int = 0) -> list[Path]:
    """Write ``n`` CT slices of ``size`` x ``size`` 16-bit pixels into ``out_dir``.

    Returns the paths in slice order. Every call makes new Study/Series/SOP Instance UIDs.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if size < 16:
        raise ValueError(f"size must be at least 16, got {size}")
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    paths: list[Path] = []
    for i in range(n):
        ds = _base_dataset(study_uid, series_uid, frame_uid, size)
        sop_uid = generate_uid()
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = i + 1
        z = i * SLICE_THICKNESS_MM
        ds.ImagePositionPatient = [-125.0, -125.0, z]
        ds.SliceLocation = z
        hu = _phantom_hu(size, i / max(n - 1, 1), rng)
        stored = np.clip(hu - RESCALE_INTERCEPT, 0, 65535).astype("<u2")
        ds.PixelData = stored.tobytes()

        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.file_meta = meta
        path = out_dir / f"ct_{i + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
