"""The hand-written File Meta Information equals pydicom's, byte for byte."""

from __future__ import annotations

import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID

from node.dicom.meta import encode_file_meta


@pytest.mark.parametrize("version,source", [("PYNETDICOM_304", "CT1"), ("PYNETDICOM_304", ""),
                                            ("ODD", "ODDAE")])
@pytest.mark.parametrize("sop", ["1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.88.34"])
def test_file_meta_matches_pydicom(version: str, source: str, sop: str) -> None:
    values = dict(sop_class_uid=sop, sop_uid="1.2.826.0.1.3680043.8.498.12345",
                  transfer_syntax_uid="1.2.840.10008.1.2.4.80",
                  implementation_class_uid="1.2.826.0.1.3680043.9.3811.3.0.4")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(values["sop_class_uid"])
    meta.MediaStorageSOPInstanceUID = UID(values["sop_uid"])
    meta.TransferSyntaxUID = UID(values["transfer_syntax_uid"])
    meta.ImplementationClassUID = UID(values["implementation_class_uid"])
    if version:
        meta.ImplementationVersionName = version
    if source:
        meta.SourceApplicationEntityTitle = source
    expected = DicomBytesIO()
    expected.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(expected, meta, enforce_standard=True)
    assert encode_file_meta(**values, implementation_version_name=version,
                            source_ae_title=source) == expected.getvalue()
