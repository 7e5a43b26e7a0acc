"""The raw header reader of the receive path agrees with pydicom, or declines."""

from __future__ import annotations

import warnings
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from ml.phantom import write_series as write_phantom
from node.dicom.header import KEYWORDS, RawHeaderError, found_implicit_vr, read_header
from node.dicom.meta import header_values
from tests.factories import ct_slice


def encode(ds: Dataset, *, implicit: bool) -> bytes:
    """The data set as a C-STORE carries it: no preamble, no file meta."""
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = implicit
    write_dataset(buffer, ds)
    return buffer.getvalue()


def pydicom_values(data: bytes, *, implicit: bool) -> dict[str, object]:
    from pydicom.filereader import read_dataset

    return dict(header_values(read_dataset(BytesIO(data), implicit, True)))


def agree(ds: Dataset, *, implicit: bool) -> dict[str, object]:
    data = encode(ds, implicit=implicit)
    raw = read_header(data, implicit_vr=implicit)
    assert raw == pydicom_values(data, implicit=implicit)
    return dict(raw)


def nested_sequences() -> Sequence:
    inner = Dataset()
    inner.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    inner.ReferencedSOPInstanceUID = generate_uid()
    item = Dataset()
    item.CodeValue = "T-A0100"
    item.CodingSchemeDesignator = "SRT"
    item.ReferencedImageSequence = Sequence([inner, inner])
    return Sequence([item, Dataset()])


def test_factory_slice_explicit_and_implicit() -> None:
    ds = ct_slice(study_uid=generate_uid(), series_uid=generate_uid(), index=3)
    for implicit in (False, True):
        values = agree(ds, implicit=implicit)
        assert values["SOPInstanceUID"] == ds.SOPInstanceUID
        assert values["ImageType"] == "ORIGINAL\\PRIMARY\\AXIAL"
        assert values["Rows"] == 32 and values["InstanceNumber"] == 4
        assert values["ImagePositionPatient"] == "-120.0\\-120.0\\15.0"


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, RLELossless, JPEGLSLossless])
def test_phantom_files(tmp_path: Path, syntax: str) -> None:
    write_phantom(tmp_path, seed=5, slices=2, size=64, subtypes=("subdural",),
                  transfer_syntax=syntax)
    paths = sorted(tmp_path.rglob("*.dcm"))
    assert paths
    for path in paths:
        ds = dcmread(path)
        del ds.file_meta
        for implicit in (False, True):
            values = agree(ds, implicit=implicit)
            assert values["Modality"] == "CT" and values["Rows"] == 64


@pytest.mark.parametrize("implicit", [False, True])
def test_sequences_of_undefined_length_are_skipped(implicit: bool) -> None:
    ds = ct_slice(study_uid=generate_uid(), series_uid=generate_uid(), index=0)
    # Sequences before, between and after wanted attributes, written with undefined
    # lengths (items too), the way many scanners write them.
    ds.ReferencedStudySequence = nested_sequences()  # (0008,1110)
    ds.ProcedureCodeSequence = nested_sequences()  # (0008,1032)
    ds.add_new(0x00091010, "LO", "PRIVATE CREATOR")
    ds.ReferencedImageSequence = nested_sequences()  # (0008,1140)
    for tag in (0x00081110, 0x00081032, 0x00081140):
        ds[tag].is_undefined_length = True
        for item in ds[tag].value:
            item.is_undefined_length_sequence_item = True
    values = agree(ds, implicit=implicit)
    assert values["StudyDescription"] == "CT HEAD WO CONTRAST"
    assert values["Columns"] == 32


def test_values_as_pydicom_reads_them() -> None:
    ds = ct_slice(study_uid=generate_uid(), series_uid=generate_uid(), index=0)
    with warnings.catch_warnings():  # values a sender got slightly wrong, kept as sent
        warnings.simplefilter("ignore")
        ds.add_new(0x00200011, "IS", " 7 ")  # SeriesNumber with padding
        ds.add_new(0x00200013, "IS", "12.0")  # InstanceNumber written as a decimal
        ds.add_new(0x00280008, "IS", "1\\2")  # NumberOfFrames with two values: not a number
        ds.PatientName = "DOE^JANE^^DR "
        ds.AccessionNumber = ""
        del ds.PatientSex
        values = agree(ds, implicit=False)
    assert values["SeriesNumber"] == 7 and values["InstanceNumber"] == 12
    assert values["NumberOfFrames"] is None
    assert "PatientSex" not in values and values["AccessionNumber"] == ""
    assert set(values) <= set(KEYWORDS)


def test_declines_text_outside_ascii() -> None:
    ds = ct_slice(study_uid=generate_uid(), series_uid=generate_uid(), index=0)
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "Müller^Jürgen"
    with pytest.raises(RawHeaderError):
        read_header(encode(ds, implicit=False), implicit_vr=False)


def test_declines_a_wanted_attribute_with_another_vr() -> None:
    ds = ct_slice(study_uid=generate_uid(), series_uid=generate_uid(), index=0)
    data = encode(ds, implicit=False)
    rows = b"\x28\x00\x10\x00US\x02\x00"
    assert data.count(rows) == 1
    with pytest.raises(RawHeaderError):  # Rows sent as SS
        read_header(data.replace(rows, b"\x28\x00\x10\x00SS\x02\x00"), implicit_vr=False)


@pytest.mark.parametrize("cut", [3, 40, 200])
def test_declines_truncated_data(cut: int) -> None:
    ds = ct_slice(study_uid=generate_uid(), series_uid=generate_uid(), index=0)
    data = encode(ds, implicit=False)
    try:
        values = read_header(data[:cut], implicit_vr=False)
    except RawHeaderError:
        return
    # What it read before the cut is exactly what is there; the rest is missing.
    assert "Columns" not in values


@pytest.mark.parametrize("first_keyword", ["SpecificCharacterSet", "ImageType", "SOPClassUID"])
@pytest.mark.parametrize("body_implicit", [True, False])
@pytest.mark.parametrize("meta_implicit", [True, False])
def test_found_implicit_vr_agrees_with_pydicom(first_keyword: str, body_implicit: bool,
                                               meta_implicit: bool) -> None:
    """The VR encoding the node finds in a data set's bytes is the one pydicom reads it in,
    whatever the meta header claims."""
    ds = ct_slice(study_uid="1.2.3", series_uid="1.2.3.4", index=1)
    ds.SpecificCharacterSet = "ISO_IR 100"
    for keyword in ("SpecificCharacterSet", "ImageType"):  # the data set starts at first_keyword
        if keyword != first_keyword and ds[keyword].tag < ds[first_keyword].tag:
            del ds[keyword]
    assert next(iter(ds)).keyword == first_keyword
    body = encode(ds, implicit=body_implicit)
    assert found_implicit_vr(body, implicit_vr_assumed=meta_implicit) is body_implicit
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom says "Expected implicit VR, but found ..."
        read = dcmread(BytesIO(mislabelled(body, ds, meta_implicit=meta_implicit)))
        raw = read.get_item(0x0020000D)  # read, not yet converted: says how it was read
        assert read.StudyInstanceUID == ds.StudyInstanceUID
    assert raw.is_implicit_VR is body_implicit


def test_found_implicit_vr_of_a_short_data_set_is_the_assumed_one() -> None:
    assert found_implicit_vr(b"\x08\x00", implicit_vr_assumed=True) is True
    assert found_implicit_vr(b"", implicit_vr_assumed=False) is False


def mislabelled(body: bytes, ds: Dataset, *, meta_implicit: bool) -> bytes:
    """A Part 10 file of `body` whose meta header names `meta_implicit`'s VR encoding."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ImplicitVRLittleEndian if meta_implicit else ExplicitVRLittleEndian
    out = DicomBytesIO()
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)
    return bytes(out.getvalue()) + body
