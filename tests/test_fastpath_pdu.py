"""What the fast path writes for Query/Retrieve (node.dicom.fastpath: pdu, dimse,
service_class) is byte for byte what pynetdicom and pydicom write."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom.dimse_messages import C_GET_RSP, C_MOVE_RSP, C_STORE_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_GET, C_MOVE, C_STORE
from pynetdicom.dsutils import encode, split_dataset
from pynetdicom.pdu import P_DATA_TF

from node.dicom.fastpath.dimse import encode_retrieve_response, encode_store_request
from node.dicom.fastpath.pdu import message_pdus
from node.dicom.fastpath.service_class import encode_identifier
from node.dicom.meta import data_set_offset, encode_file_meta
from node.dicom.qr_identifiers import PRIVATE_CREATOR, TRIAGE_GROUP, ResponseTemplate
from tests.factories import ct_slice

MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
GET = "1.2.840.10008.5.1.4.1.2.2.3"


def pynetdicom_pdus(message: DIMSEMessage, context_id: int, max_pdu: int) -> bytes:
    """The P-DATA-TF PDUs pynetdicom's upper layer sends for `message`."""
    return b"".join(P_DATA_TF(pdata).encode() for pdata in message.encode_msg(context_id, max_pdu))


def store_request(**values: object) -> C_STORE:
    request = C_STORE()
    request.MessageID = 7
    request.AffectedSOPClassUID = CTImageStorage
    request.AffectedSOPInstanceUID = "1.2.826.0.1.3680043.10.1001.77"
    request.Priority = 2
    for name, value in values.items():
        setattr(request, name, value)
    return request


@pytest.mark.parametrize("max_pdu", [0, 16384, 1000, 131072])
@pytest.mark.parametrize("originator", [{}, {"MoveOriginatorApplicationEntityTitle": "PACS",
                                             "MoveOriginatorMessageID": 3},
                                        {"MoveOriginatorApplicationEntityTitle": "FINDSCU1",
                                         "MoveOriginatorMessageID": 65535}])
@pytest.mark.parametrize("size", [2, 16378, 16379, 40_001 + 1, 524_288 + 1400])
def test_a_stored_file_goes_out_as_pynetdicom_sends_its_bytes(
        max_pdu: int, originator: dict[str, object], size: int) -> None:
    data = bytes(range(256)) * (size // 256) + b"\x01" * (size % 256)
    request = store_request(**originator)
    ours = b"".join(message_pdus(5, encode_store_request(request), data, max_pdu))
    request.DataSet = BytesIO(data)
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    assert ours == pynetdicom_pdus(message, 5, max_pdu)


def test_a_store_request_without_its_fields_is_refused() -> None:
    with pytest.raises(ValueError, match="C-STORE request needs"):
        encode_store_request(C_STORE())
    with pytest.raises(ValueError, match="no room"):
        message_pdus(1, b"\x00" * 8, b"", 6)


def retrieve_response(kind: type, **values: object) -> C_MOVE:
    rsp = kind()
    rsp.MessageIDBeingRespondedTo = 11
    rsp.AffectedSOPClassUID = MOVE if kind is C_MOVE else GET
    for name, value in values.items():
        setattr(rsp, name, value)
    return rsp


@pytest.mark.parametrize("kind", [C_MOVE, C_GET])
@pytest.mark.parametrize("values", [
    {"Status": 0xFF00, "NumberOfRemainingSuboperations": 199, "NumberOfCompletedSuboperations": 1,
     "NumberOfFailedSuboperations": 0, "NumberOfWarningSuboperations": 0},
    {"Status": 0x0000, "NumberOfCompletedSuboperations": 200, "NumberOfFailedSuboperations": 0,
     "NumberOfWarningSuboperations": 0},
    {"Status": 0xA801}, {"Status": 0xFE00, "NumberOfRemainingSuboperations": 3}])
def test_retrieve_responses_are_written_as_pynetdicom_writes_them(
        kind: type, values: dict[str, int]) -> None:
    rsp = retrieve_response(kind, **values)
    message = (C_MOVE_RSP if kind is C_MOVE else C_GET_RSP)()
    message.primitive_to_message(rsp)
    (pdata,) = list(message.encode_msg(1, 0))
    ((_cid, pdv),) = pdata.presentation_data_value_list
    assert pdv[:1] == b"\x03"
    assert encode_retrieve_response(rsp) == bytes(pdv[1:])


def test_retrieve_responses_with_more_go_the_general_way() -> None:
    failed = retrieve_response(C_MOVE, Status=0xB000, Identifier=BytesIO(b"\x08\x00\x58\x11"))
    assert encode_retrieve_response(failed) is None
    assert encode_retrieve_response(retrieve_response(C_GET, Status=0xC000,
                                                      ErrorComment="no")) is None
    assert encode_retrieve_response(store_request()) is None


def template(keys: dict[str, str], filled: list[str]) -> ResponseTemplate:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    if "triage" in filled:
        block = identifier.private_block(TRIAGE_GROUP, PRIVATE_CREATOR, create=True)
        block.add_new(0x01, "CS", "")
        block.add_new(0x03, "CS", "")
    return ResponseTemplate.of(identifier, filled, "STUDY", "ICHTRIAGE")


ROWS = [
    {"PatientName": "CHEN^P1", "PatientID": "BQ00001", "StudyDate": "20250101",
     "StudyInstanceUID": "1.2.826.0.1.3680043.10.1001.1", "AccessionNumber": "A0000001",
     "StudyDescription": "CT HEAD", "NumberOfStudyRelatedInstances": 1,
     "ModalitiesInStudy": ["CT", "SR"], "TriagePriority": "HIGH",
     "TriageFindings": ["IPH", "SAH"]},
    {"PatientName": "Müller^Jürgen", "PatientID": "X", "StudyDate": None,
     "StudyInstanceUID": "1.2.3", "AccessionNumber": "", "StudyDescription": "ÉTUDE",
     "NumberOfStudyRelatedInstances": 12345, "ModalitiesInStudy": [], "TriagePriority": None,
     "TriageFindings": []},
]


@pytest.mark.parametrize("implicit", [True, False])
@pytest.mark.parametrize("row", ROWS)
@pytest.mark.parametrize("triage", [False, True])
def test_identifiers_are_written_as_pydicom_writes_them(implicit: bool, row: dict[str, object],
                                                         triage: bool) -> None:
    keys = {k: "" for k in ("PatientName", "PatientID", "StudyDate", "StudyInstanceUID",
                            "AccessionNumber", "StudyDescription",
                            "NumberOfStudyRelatedInstances", "ModalitiesInStudy",
                            "ReferringPhysicianName")}
    filled = [k for k in keys if k != "ReferringPhysicianName"] + (["triage"] if triage else [])
    if triage:
        filled += ["TriagePriority", "TriageFindings"]
    made = template(keys, filled)
    response = made.response(row, implicit=implicit)
    expected = encode(response, implicit, True)
    assert encode_identifier(response, implicit=implicit) == expected
    assert made.encoded(row, implicit=implicit) == expected


def test_other_data_sets_are_left_to_pydicom() -> None:
    decoded = Dataset()
    decoded.PatientID = "X"
    assert encode_identifier(decoded, implicit=True) is None
    response = template({"PatientID": ""}, ["PatientID"]).response({"PatientID": "X"},
                                                                    implicit=True)
    assert encode_identifier(response, implicit=False) is None  # not in its encoding


def test_the_data_set_starts_where_pynetdicom_finds_it(tmp_path: Path) -> None:
    node_file = tmp_path / "node.dcm"
    node_file.write_bytes(encode_file_meta(
        sop_class_uid=CTImageStorage, sop_uid="1.2.3.4", transfer_syntax_uid=ExplicitVRLittleEndian,
        implementation_class_uid="1.2.826.0.1.3680043.10.1", source_ae_title="CT1")
        + b"\x08\x00\x16\x00UI\x1a\x00" + CTImageStorage.encode() + b"\x00")
    pydicom_file = tmp_path / "pydicom.dcm"
    ct_slice(study_uid="1.2.3", series_uid="1.2.3.1", index=0, size=8).save_as(
        pydicom_file, enforce_file_format=True)
    for path in (node_file, pydicom_file):
        assert data_set_offset(path.read_bytes()) == split_dataset(path)[1]
    assert data_set_offset(b"\0" * 200) is None  # no 'DICM': pydicom reads the meta
    assert data_set_offset(node_file.read_bytes()[:150]) is None  # cut inside the meta
