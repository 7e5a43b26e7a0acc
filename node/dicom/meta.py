"""The index attributes of a data set (what `storage` keeps of every instance)."""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any, cast

from pydicom.dataset import Dataset

from node.dicom.header import WANTED, HeaderValues
from storage.instances import InstanceMeta


def meta_from_dataset(ds: Dataset, transfer_syntax: str) -> InstanceMeta:
    """Raises storage.errors.InvalidUIDError when a needed UID is missing or invalid."""
    return meta_from_values(header_values(ds), transfer_syntax)


def header_values(ds: Dataset) -> HeaderValues:
    """The index attributes of a pydicom data set, as `node.dicom.header.read_header` gives
    them from raw bytes: text stripped and multiple values joined by backslashes."""
    values: HeaderValues = {}
    for keyword, _vr, kind in WANTED.values():
        value = ds.get(keyword)
        if value is None:
            continue
        if kind == "uid":
            values[keyword] = _uid(value)
        elif kind in ("int", "us"):
            values[keyword] = _int(value)
        else:
            values[keyword] = _text(value)
    return values


def meta_from_values(values: HeaderValues, transfer_syntax: str) -> InstanceMeta:
    """Raises storage.errors.InvalidUIDError when a needed UID is missing or invalid."""
    def text(keyword: str) -> str:
        return str(values.get(keyword) or "")

    def number(keyword: str) -> int | None:
        value = values.get(keyword)
        return value if isinstance(value, int) else None

    return InstanceMeta(
        sop_class_uid=_uid(values.get("SOPClassUID")),
        sop_uid=_uid(values.get("SOPInstanceUID")),
        study_uid=_uid(values.get("StudyInstanceUID")),
        series_uid=_uid(values.get("SeriesInstanceUID")),
        transfer_syntax_uid=str(transfer_syntax),
        patient_id=text("PatientID"),
        issuer_of_patient_id=text("IssuerOfPatientID"),
        patient_name=text("PatientName"),
        birth_date=text("PatientBirthDate"),
        sex=text("PatientSex"),
        accession_number=text("AccessionNumber"),
        study_id=text("StudyID"),
        study_date=text("StudyDate"),
        study_time=text("StudyTime"),
        study_description=text("StudyDescription"),
        referring_physician=text("ReferringPhysicianName"),
        modality=text("Modality"),
        body_part=text("BodyPartExamined"),
        series_number=number("SeriesNumber"),
        series_description=text("SeriesDescription"),
        instance_number=number("InstanceNumber"),
        image_type=text("ImageType"),
        image_position=text("ImagePositionPatient"),
        image_orientation=text("ImageOrientationPatient"),
        rows=number("Rows"),
        columns=number("Columns"),
        number_of_frames=number("NumberOfFrames"),
    )


def _uid(value: object) -> str:
    return str(value or "").strip()[:64]


def _text(value: object) -> str:
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in cast(Iterable[object], value))
    return str(value).strip()


def _int(value: object) -> int | None:
    try:
        return int(cast(Any, value)) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def uid_bytes(value: object) -> bytes:
    """A UID as encoded in a data set: ASCII, padded to even length with a NUL (PS3.5 9.1)."""
    raw = str(value).encode("ascii")
    return raw + b"\0" * (len(raw) % 2)


def _element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def encode_file_meta(*, sop_class_uid: str, sop_uid: str, transfer_syntax_uid: str,
                     implementation_class_uid: str, implementation_version_name: str = "",
                     source_ae_title: str = "") -> bytes:
    """Preamble, 'DICM' and the File Meta Information (PS3.10 7.1), explicit VR little endian.

    Written by hand because pydicom's general writer costs more than the rest of the receive
    path's header work together; the test checks it byte for byte against pydicom's.
    """
    def text(value: str) -> bytes:
        raw = value.encode("ascii", "replace")
        return raw + b" " * (len(raw) % 2)

    body = b"".join([
        struct.pack("<HH2s2sI", 0x0002, 0x0001, b"OB", b"\0\0", 2) + b"\x00\x01",
        _element(0x0002, 0x0002, b"UI", uid_bytes(sop_class_uid)),
        _element(0x0002, 0x0003, b"UI", uid_bytes(sop_uid)),
        _element(0x0002, 0x0010, b"UI", uid_bytes(transfer_syntax_uid)),
        _element(0x0002, 0x0012, b"UI", uid_bytes(implementation_class_uid)),
        _element(0x0002, 0x0013, b"SH", text(implementation_version_name))
        if implementation_version_name else b"",
        _element(0x0002, 0x0016, b"AE", text(source_ae_title)) if source_ae_title else b"",
    ])
    group_length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(body))
    return b"\0" * 128 + b"DICM" + group_length + body


_GROUP_LENGTH = struct.pack("<HH2sH", 0x0002, 0x0000, b"UL", 4)


def data_set_offset(content: bytes | memoryview) -> int | None:
    """Where the data set starts in a DICOM file's `content` (PS3.10 7.1): after the
    preamble, 'DICM' and the File Meta Information its (0002,0000) group length covers, as
    the node writes every file (`encode_file_meta`). None when the file does not start so,
    or what follows the group is still group 0002 (then read the meta with pydicom)."""
    if bytes(content[128:132]) != b"DICM" or bytes(content[132:140]) != _GROUP_LENGTH:
        return None
    offset = 144 + int.from_bytes(content[140:144], "little")
    if offset > len(content) or bytes(content[offset:offset + 2]) == b"\x02\x00":
        return None
    return offset
