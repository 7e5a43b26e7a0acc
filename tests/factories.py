"""Small DICOM data sets for tests that need exact control over their attributes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def ct_slice(*, study_uid: str, series_uid: str, index: int, size: int = 32,
             patient_name: str = "TEST^PATIENT", patient_id: str = "PID-0001",
             modality: str = "CT", image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL"),
             body_part: str = "HEAD", sop_class: str = CTImageStorage) -> Dataset:
    """One small CT slice with the attributes the index and the eligibility rules read."""
    ds = Dataset()
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19600101"
    ds.PatientSex = "F"
    ds.AccessionNumber = "ACC1"
    ds.StudyDate = "20261126"
    ds.StudyTime = "101500"
    ds.StudyDescription = "CT HEAD WO CONTRAST"
    ds.Modality = modality
    ds.BodyPartExamined = body_part
    ds.SeriesNumber = 2
    ds.SeriesDescription = "AXIAL 5MM"
    ds.InstanceNumber = index + 1
    ds.ImageType = list(image_type)
    ds.ImagePositionPatient = [-120.0, -120.0, 5.0 * index]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.PixelData = np.full((size, size), 1024 + 40, np.int16).tobytes()
    return ds


def ct_series(n: int, **kwargs: object) -> list[Dataset]:
    study_uid = str(kwargs.pop("study_uid", generate_uid()))
    series_uid = str(kwargs.pop("series_uid", generate_uid()))
    return [ct_slice(study_uid=study_uid, series_uid=series_uid, index=i, **kwargs)  # type: ignore[arg-type]
            for i in range(n)]


def write_series(folder: Path, datasets: list[Dataset]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = folder / f"{ds.InstanceNumber:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
