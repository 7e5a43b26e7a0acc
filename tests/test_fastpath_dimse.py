"""C-STORE messages read and written, and C-FIND responses written, directly
(node.dicom.fastpath.dimse) match pynetdicom's."""

from __future__ import annotations

from io import BytesIO
from types import SimpleNamespace

import pytest
from pydicom.uid import CTImageStorage
from pynetdicom.dimse_messages import (
    C_CANCEL_RQ,
    C_FIND_RSP,
    C_STORE_RQ,
    C_STORE_RSP,
    DIMSEMessage,
)
from pynetdicom.dimse_primitives import C_CANCEL, C_FIND, C_STORE
from pynetdicom.pdu_primitives import P_DATA

from node.dicom.fastpath.dimse import (
    StoreDIMSE,
    encode_find_response,
    encode_store_response,
    store_request,
    store_response,
)


def c_store(**values: object) -> C_STORE:
    """A C-STORE primitive of a CT image with `values` set (the setters validate them)."""
    primitive = C_STORE()
    primitive.AffectedSOPClassUID = CTImageStorage
    for name, value in values.items():
        setattr(primitive, name, value)
    return primitive


def pynetdicom_bytes(rsp: C_STORE) -> bytes:
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    (pdata,) = list(message.encode_msg(1, 0))
    ((context_id, pdv),) = pdata.presentation_data_value_list
    assert context_id == 1 and pdv[0] == 0x03
    return bytes(pdv[1:])


@pytest.mark.parametrize("status", [0x0000, 0xA700, 0xC000, 0xB007])
@pytest.mark.parametrize("instance", ["1.2.3", "1.2.840.113619.2.55.3.604688119.9"])
def test_store_response_bytes_match_pynetdicom(status: int, instance: str) -> None:
    rsp = c_store(MessageIDBeingRespondedTo=7, AffectedSOPInstanceUID=instance, Status=status)
    assert encode_store_response(rsp) == pynetdicom_bytes(rsp)


def test_responses_with_more_go_the_general_way() -> None:
    rsp = c_store(MessageIDBeingRespondedTo=7, AffectedSOPInstanceUID="1.2.3", Status=0xC000,
                  ErrorComment="cannot understand")
    assert encode_store_response(rsp) is None
    assert encode_store_response(c_store(MessageID=1)) is None


def received(request: C_STORE, extra: bytes = b"") -> DIMSEMessage:
    """`request` as the acceptor's DIMSE layer has it once the message is complete."""
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    incoming = DIMSEMessage()
    for pdata in message.encode_msg(3, 16384):
        if extra and pdata.presentation_data_value_list[0][1][0] & 1:
            ((context_id, pdv),) = pdata.presentation_data_value_list
            patched = P_DATA()
            patched.presentation_data_value_list = [[context_id, pdv + extra]]
            pdata = patched
        if incoming.decode_msg(pdata):
            return incoming
    raise AssertionError("the message never completed")


def fields(primitive: C_STORE) -> tuple[object, ...]:
    return (primitive.MessageID, primitive.AffectedSOPClassUID,
            primitive.AffectedSOPInstanceUID, primitive.Priority,
            primitive.MoveOriginatorApplicationEntityTitle, primitive.MoveOriginatorMessageID,
            primitive.DataSet.getvalue() if primitive.DataSet else None, primitive._context_id)


@pytest.mark.parametrize("move", [False, True])
@pytest.mark.parametrize("instance", ["1.2.3", "1.2.840.113619.2.55.3.604688119.99"])
def test_store_requests_read_as_pynetdicom_reads_them(move: bool, instance: str) -> None:
    originator = {"MoveOriginatorApplicationEntityTitle": "PACS",
                  "MoveOriginatorMessageID": 3} if move else {}
    request = c_store(MessageID=12, AffectedSOPInstanceUID=instance, Priority=1,
                      DataSet=BytesIO(b"\x08\x00\x16\x00" + b"x" * 40000),  # several PDVs
                      **originator)
    message = received(request)
    ours = store_request(message)
    assert ours is not None
    assert fields(ours) == fields(message.message_to_primitive())
    assert isinstance(ours.AffectedSOPInstanceUID, str) and ours._context_id == 3


def test_a_request_with_unexpected_elements_is_left_to_pynetdicom() -> None:
    request = c_store(MessageID=12, AffectedSOPInstanceUID="1.2.3",
                      DataSet=BytesIO(b"\x08\x00\x16\x00"))
    # (0000,0600) Move Destination has no place in a C-STORE-RQ
    assert store_request(received(request, b"\x00\x00\x00\x06\x04\x00\x00\x00PACS")) is None


def c_find(identifier: bytes | None, **values: object) -> C_FIND:
    primitive = C_FIND()
    primitive.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.1"
    primitive.MessageIDBeingRespondedTo = 9
    primitive.Identifier = BytesIO(identifier) if identifier is not None else None
    for name, value in values.items():
        setattr(primitive, name, value)
    return primitive


@pytest.mark.parametrize(("status", "identifier"), [
    (0xFF00, b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY "), (0x0000, None), (0xFE00, None),
    (0xA900, None)])
def test_find_response_bytes_match_pynetdicom(status: int, identifier: bytes | None) -> None:
    rsp = c_find(identifier, Status=status)
    message = C_FIND_RSP()
    message.primitive_to_message(rsp)
    pdvs = [pdv for pdata in message.encode_msg(1, 0)
            for _cid, pdv in pdata.presentation_data_value_list]
    encoded = encode_find_response(rsp)
    assert encoded is not None
    command, data = encoded
    assert pdvs[0] == b"\x03" + command
    assert (pdvs[1] if len(pdvs) > 1 else None) == (b"\x02" + data if data is not None else None)


def test_find_responses_with_more_go_the_general_way() -> None:
    assert encode_find_response(c_find(None, Status=0xC000, ErrorComment="bad date")) is None
    assert encode_find_response(c_store(MessageIDBeingRespondedTo=1, Status=0)) is None


def received_response(rsp: C_STORE, extra: bytes = b"") -> DIMSEMessage:
    """`rsp` as the requestor's DIMSE layer has it once the message is complete."""
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    incoming = DIMSEMessage()
    for pdata in message.encode_msg(5, 16384):
        ((context_id, pdv),) = pdata.presentation_data_value_list
        patched = P_DATA()
        patched.presentation_data_value_list = [[context_id, pdv + extra]]
        if incoming.decode_msg(patched):
            return incoming
    raise AssertionError("the message never completed")


def response_fields(primitive: C_STORE) -> tuple[object, ...]:
    return (primitive.MessageIDBeingRespondedTo, primitive.AffectedSOPClassUID,
            primitive.AffectedSOPInstanceUID, primitive.Status, primitive.ErrorComment,
            primitive.OffendingElement, primitive._context_id)


@pytest.mark.parametrize("status", [0x0000, 0xA700, 0xB007, 0xC000])
@pytest.mark.parametrize("instance", ["1.2.3", "1.2.840.113619.2.55.3.604688119.99"])
def test_store_responses_read_as_pynetdicom_reads_them(status: int, instance: str) -> None:
    message = received_response(c_store(MessageIDBeingRespondedTo=4, Status=status,
                                         AffectedSOPInstanceUID=instance))
    ours = store_response(message)
    assert ours is not None
    assert response_fields(ours) == response_fields(message.message_to_primitive())


def test_a_response_with_an_error_comment_is_left_to_pynetdicom() -> None:
    message = received_response(c_store(MessageIDBeingRespondedTo=4, Status=0xC000,
                                         AffectedSOPInstanceUID="1.2.3",
                                         ErrorComment="cannot understand"))
    assert store_response(message) is None
    assert message.message_to_primitive().ErrorComment == "cannot understand"


def _whole_response(rsp: C_STORE, *, watched: bool = False) -> C_STORE | None:
    """What StoreDIMSE takes straight from a P-DATA holding `rsp` whole, without a
    DIMSEMessage (on an association with EVT_DIMSE_RECV handlers bound if `watched`)."""
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    (pdata,) = list(message.encode_msg(3, 16384))
    handlers = [object()] if watched else []
    provider = SimpleNamespace(assoc=SimpleNamespace(get_handlers=lambda _event: handlers))
    return StoreDIMSE._store_response(provider, pdata)  # type: ignore[arg-type]


@pytest.mark.parametrize("status", [0x0000, 0xA700, 0xB007])
def test_a_whole_store_response_is_read_as_pynetdicom_reads_it(status: int) -> None:
    rsp = c_store(MessageIDBeingRespondedTo=9, Status=status, AffectedSOPInstanceUID="1.2.3.4")
    ours = _whole_response(rsp)
    assert ours is not None
    theirs = received_response(rsp).message_to_primitive()
    assert response_fields(ours)[:-1] == response_fields(theirs)[:-1]
    assert ours._context_id == 3


def test_other_messages_and_watched_associations_take_the_general_way() -> None:
    rsp = c_store(MessageIDBeingRespondedTo=9, Status=0xC000, AffectedSOPInstanceUID="1.2.3",
                  ErrorComment="cannot understand")
    assert _whole_response(rsp) is None
    plain = c_store(MessageIDBeingRespondedTo=9, Status=0, AffectedSOPInstanceUID="1.2.3")
    assert _whole_response(plain, watched=True) is None
    cancel = C_CANCEL()
    cancel.MessageIDBeingRespondedTo = 1
    message = C_CANCEL_RQ()
    message.primitive_to_message(cancel)
    (pdata,) = list(message.encode_msg(1, 16384))
    provider = SimpleNamespace(assoc=SimpleNamespace(get_handlers=lambda _event: []))
    assert StoreDIMSE._store_response(provider, pdata) is None  # type: ignore[arg-type]
