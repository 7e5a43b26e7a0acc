"""The index attributes of a data set (what `storage` keeps of every instance)."""

from __future__ import annotations

import struct

from pydicom.dataset import Dataset

from storage.instances import InstanceMeta


def meta_from_dataset(ds: Dataset, transfer_syntax: str) -> InstanceMeta:
    """Raises storage.errors.InvalidUIDError when a needed UID is missing or invalid."""
    return InstanceMeta(
        sop_class_uid=_uid(ds.get("SOPClassUID")),
        sop_uid=_uid(ds.get("SOPInstanceUID")),
        study_uid=_uid(ds.get("StudyInstanceUID")),
        series_uid=_uid(ds.get("SeriesInstanceUID")),
        transfer_syntax_uid=str(transfer_syntax),
        patient_id=_text(ds, "PatientID"),
        issuer_of_patient_id=_text(ds, "IssuerOfPatientID"),
        patient_name=_text(ds, "PatientName"),
        birth_date=_text(ds, "PatientBirthDate"),
        sex=_text(ds, "PatientSex"),
        accession_number=_text(ds, "AccessionNumber"),
        study_id=_text(ds, "StudyID"),
        study_date=_text(ds, "StudyDate"),
        study_time=_text(ds, "StudyTime"),
        study_description=_text(ds, "StudyDescription"),
        referring_physician=_text(ds, "ReferringPhysicianName"),
        modality=_text(ds, "Modality"),
        body_part=_text(ds, "BodyPartExamined"),
        series_number=_int(ds, "SeriesNumber"),
        series_description=_text(ds, "SeriesDescription"),
        instance_number=_int(ds, "InstanceNumber"),
        image_type=_text(ds, "ImageType"),
        image_position=_text(ds, "ImagePositionPatient"),
        image_orientation=_text(ds, "ImageOrientationPatient"),
        rows=_int(ds, "Rows"),
        columns=_int(ds, "Columns"),
        number_of_frames=_int(ds, "NumberOfFrames"),
    )


def _uid(value: object) -> str:
    return str(value or "").strip()[:64]


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def encode_file_meta(*, sop_class_uid: str, sop_uid: str, transfer_syntax_uid: str,
                     implementation_class_uid: str, implementation_version_name: str = "",
                     source_ae_title: str = "") -> bytes:
    """Preamble, 'DICM' and the File Meta Information (PS3.10 7.1), explicit VR little endian.

    Written by hand because pydicom's general writer costs more than the rest of the receive
    path's header work together; the test checks it byte for byte against pydicom's.
    """
    def ui(value: str) -> bytes:
        raw = value.encode("ascii")
        return raw + b"\0" * (len(raw) % 2)

    def text(value: str) -> bytes:
        raw = value.encode("ascii", "replace")
        return raw + b" " * (len(raw) % 2)

    body = b"".join([
        struct.pack("<HH2s2sI", 0x0002, 0x0001, b"OB", b"\0\0", 2) + b"\x00\x01",
        _element(0x0002, 0x0002, b"UI", ui(sop_class_uid)),
        _element(0x0002, 0x0003, b"UI", ui(sop_uid)),
        _element(0x0002, 0x0010, b"UI", ui(transfer_syntax_uid)),
        _element(0x0002, 0x0012, b"UI", ui(implementation_class_uid)),
        _element(0x0002, 0x0013, b"SH", text(implementation_version_name))
        if implementation_version_name else b"",
        _element(0x0002, 0x0016, b"AE", text(source_ae_title)) if source_ae_title else b"",
    ])
    group_length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(body))
    return b"\0" * 128 + b"DICM" + group_length + body
