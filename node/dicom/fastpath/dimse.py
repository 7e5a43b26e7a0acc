"""DIMSE messages read and written without pydicom Datasets: C-STORE requests and responses
(both ways), C-FIND, C-MOVE and C-GET responses.

pynetdicom turns every DIMSE command set into a pydicom Dataset and back: it decodes each
C-STORE request's command into a Dataset and copies its elements onto the primitive one by
one, and builds each response as a Dataset that it validates and encodes twice (once for the
group length). On four associations the request's conversion alone was 8 % of a receiving
process's GIL samples, and the response's 0.3 ms of CPU per instance. A C-STORE request and a plain response are a handful of fixed elements of group 0000
in implicit VR little endian (PS3.7 9.3.1); here they are read and written directly, and
anything else goes pynetdicom's general way. tests/test_fastpath_dimse.py checks both against
pynetdicom's own.
"""

from __future__ import annotations

import logging
import struct
import threading
from io import BytesIO
from typing import Any, cast

from pynetdicom import evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_STORE_RQ, C_STORE_RSP, DIMSEMessage
from pynetdicom.dimse_primitives import (
    C_CANCEL,
    C_FIND,
    C_GET,
    C_MOVE,
    C_STORE,
    N_EVENT_REPORT,
    DimsePrimitiveType,
    DimseServiceType,
)
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.utils import make_target

from node.dicom.fastpath.pdu import single_pdu
from node.dicom.meta import uid_bytes

logger = logging.getLogger(__name__)

_US = struct.Struct("<H")
# with any of these handlers bound, PDUs go through pynetdicom's state machine, which emits them
_PDU_SENT_EVENTS = (evt.EVT_PDU_SENT, evt.EVT_DATA_SENT, evt.EVT_FSM_TRANSITION)
_UL = struct.Struct("<I")
_TAG_LENGTH = struct.Struct("<HHI")

# C-STORE-RQ (PS3.7 table 9.3-1): the elements it must have, and those it may.
_REQUIRED = {0x0002, 0x0100, 0x0110, 0x0700, 0x0800, 0x1000}
_OPTIONAL = {0x0000, 0x1030, 0x1031}
_US_ELEMENTS = {0x0100, 0x0110, 0x0700, 0x0800, 0x1031}


class StoreDIMSE(DIMSEServiceProvider):
    """The DIMSE provider of the node's associations: C-STORE requests and plain responses
    take the direct path; every other message, and every message while pynetdicom's
    EVT_DIMSE_SENT handlers are bound, goes the general way."""

    def receive_primitive(self, primitive: P_DATA) -> None:
        # pynetdicom 3.0.4 DIMSEServiceProvider.receive_primitive, reading a C-STORE
        # request with store_request() rather than message_to_primitive().
        if self.message is None:
            response = self._store_response(primitive)
            if response is not None:  # a sub-operation's response, complete in one fragment
                self.msg_queue.put((cast(int, response._context_id), response))
                return
            self.message = DIMSEMessage()
        message = self.message
        if not message.decode_msg(primitive, self.assoc):
            return
        evt.trigger(self.assoc, evt.EVT_DIMSE_RECV, {"message": message})
        context_id = cast(int, message.context_id)
        if isinstance(message, C_STORE_RQ):
            request = store_request(message)
        else:  # the response to a C-MOVE or C-GET sub-operation
            request = store_response(message) if isinstance(message, C_STORE_RSP) else None
        if request is not None:
            received: DimsePrimitiveType = request
        else:
            try:
                received = message.message_to_primitive()
            except Exception as exc:
                logger.error("Received an invalid DIMSE message")
                logger.exception(exc)
                self.dul.event_queue.put("Evt19")
                return
        if isinstance(received, C_CANCEL) and len(self.cancel_req) < 10:
            self.cancel_req[cast(int, received.MessageIDBeingRespondedTo)] = received
        elif isinstance(received, N_EVENT_REPORT) and received.is_valid_request:
            threading.Thread(target=make_target(self.assoc._serve_request),
                             args=(received, context_id)).start()
        else:
            self.msg_queue.put((context_id, cast(DimseServiceType, received)))
        message.encoded_command_set = BytesIO()
        message.data_set = BytesIO()
        message._data_set_file = None
        message._data_set_path = None
        self.message = None

    def _store_response(self, primitive: P_DATA) -> C_STORE | None:
        """The C-STORE primitive of a plain C-STORE-RSP that `primitive` holds whole (one
        PDV item, the command's last fragment), read without a DIMSEMessage or a pydicom
        Dataset (one per sub-operation of a C-MOVE or C-GET); None for anything else, or
        while EVT_DIMSE_RECV handlers want the message."""
        items = primitive.presentation_data_value_list
        if len(items) != 1 or self.assoc.get_handlers(evt.EVT_DIMSE_RECV):
            return None
        context_id, data = items[0]
        if data[:1] != b"\x03":  # a command, its last fragment (PS3.8 E.2)
            return None
        return response_primitive(data[1:], context_id)

    def send_msg(self, primitive: DimsePrimitiveType, context_id: int) -> None:
        command = encode_store_response(primitive) or encode_retrieve_response(primitive)
        data = None
        if command is None:
            command, data = encode_find_response(primitive) or (None, None)
        limit = self.maximum_pdu_size
        # one P-DATA-TF: each PDV item is 6 bytes of header and its fragment (PS3.8 9.3.5)
        length = 6 + len(command or b"") + (6 + len(data) if data is not None else 0)
        if (command is None or self.assoc.get_handlers(evt.EVT_DIMSE_SENT)
                or (limit and length > limit)):
            super().send_msg(primitive, context_id)
            return
        send_encoded = getattr(self.dul, "send_encoded", None)
        if not isinstance(primitive, C_STORE) and send_encoded is not None and not any(
                self.assoc.get_handlers(event) for event in _PDU_SENT_EVENTS):
            # a Query/Retrieve response: written by this thread where it can (WakingDUL)
            send_encoded(single_pdu(context_id, command, data))
            return
        pdata = P_DATA()
        # Message control header 0x03: a command, and its last fragment; 0x02: the last
        # fragment of a data set (PS3.8 E.2). pynetdicom's setter wants [ID, PDV] lists,
        # whatever its type hint says.
        items: list[Any] = [[context_id, b"\x03" + command]]
        if data is not None:
            items.append([context_id, b"\x02" + data])
        pdata.presentation_data_value_list = items
        self.dul.send_pdu(pdata)


def store_request(message: C_STORE_RQ) -> C_STORE | None:
    """The C-STORE primitive of a complete C-STORE-RQ message, read from its raw command
    set; None when the command set holds anything unexpected (pynetdicom then reads it)."""
    elements = _command_elements(message.encoded_command_set.getvalue())
    if elements is None or not _REQUIRED <= elements.keys() <= _REQUIRED | _OPTIONAL:
        return None
    if any(len(elements[tag]) != 2 for tag in _US_ELEMENTS & elements.keys()):
        return None
    try:
        sop_class = _text(elements[0x0002])
        sop_instance = _text(elements[0x1000])
        originator = _text(elements[0x1030]) if 0x1030 in elements else None
    except UnicodeDecodeError:
        return None
    primitive = C_STORE()
    primitive.MessageID = _US.unpack(elements[0x0110])[0]
    primitive.AffectedSOPClassUID = sop_class
    primitive.AffectedSOPInstanceUID = sop_instance
    primitive.Priority = _US.unpack(elements[0x0700])[0]
    if originator:
        primitive.MoveOriginatorApplicationEntityTitle = originator
    if 0x1031 in elements:
        primitive.MoveOriginatorMessageID = _US.unpack(elements[0x1031])[0]
    primitive.DataSet = message.data_set
    primitive._context_id = message.context_id
    primitive._dataset_path = message._data_set_path
    primitive._dataset_file = message._data_set_file
    return primitive


# C-STORE-RSP (PS3.7 table 9.3-2) without an error comment or offending element
_RESPONSE = {0x0002, 0x0100, 0x0120, 0x0800, 0x0900, 0x1000}


def store_response(message: C_STORE_RSP) -> C_STORE | None:
    """The C-STORE primitive of a complete, plain C-STORE-RSP, read from its raw command
    set; None when it holds anything else (pynetdicom then reads it)."""
    return response_primitive(message.encoded_command_set.getvalue(),
                              cast(int, message.context_id))


def response_primitive(command: bytes, context_id: int) -> C_STORE | None:
    """The C-STORE primitive of a plain C-STORE-RSP command set (`command`, implicit VR
    little endian, PS3.7 9.3.1.2), received on presentation context `context_id`; None
    when it is anything else."""
    elements = _command_elements(command)
    if elements is None or not _RESPONSE <= elements.keys() <= _RESPONSE | {0x0000}:
        return None
    if any(len(elements[tag]) != 2 for tag in (0x0100, 0x0120, 0x0800, 0x0900)):
        return None
    if _US.unpack(elements[0x0100])[0] != 0x8001:
        return None
    try:
        sop_class = _text(elements[0x0002])
        sop_instance = _text(elements[0x1000])
    except UnicodeDecodeError:
        return None
    primitive = C_STORE()
    primitive.AffectedSOPClassUID = sop_class
    primitive.MessageIDBeingRespondedTo = _US.unpack(elements[0x0120])[0]
    primitive.Status = _US.unpack(elements[0x0900])[0]
    primitive.AffectedSOPInstanceUID = sop_instance
    primitive._context_id = context_id
    return primitive


def _command_elements(command: bytes) -> dict[int, bytes] | None:
    """Element number -> value of a group 0000 command set; None if it is not one."""
    elements: dict[int, bytes] = {}
    offset, end = 0, len(command)
    while offset < end:
        if offset + 8 > end:
            return None
        group, element, length = _TAG_LENGTH.unpack_from(command, offset)
        offset += 8
        if group != 0 or offset + length > end or element in elements:
            return None
        elements[element] = command[offset:offset + length]
        offset += length
    return elements


def _text(value: bytes) -> str:
    return value.decode("ascii").strip("\0 ")


def encode_store_response(primitive: object) -> bytes | None:
    """The command set of a plain C-STORE-RSP, implicit VR little endian; None when the
    response carries more than the fixed elements."""
    if not isinstance(primitive, C_STORE) or primitive.MessageIDBeingRespondedTo is None:
        return None
    if primitive.ErrorComment or primitive.OffendingElement:
        return None
    sop_class, sop_instance = primitive.AffectedSOPClassUID, primitive.AffectedSOPInstanceUID
    if not sop_class or not sop_instance or primitive.Status is None:
        return None
    body = b"".join([
        _command_element(0x0002, uid_bytes(sop_class)),
        _command_element(0x0100, _US.pack(0x8001)),  # C-STORE-RSP
        _command_element(0x0120, _US.pack(primitive.MessageIDBeingRespondedTo)),
        _command_element(0x0800, _US.pack(0x0101)),  # no data set follows
        _command_element(0x0900, _US.pack(int(primitive.Status))),
        _command_element(0x1000, uid_bytes(sop_instance)),
    ])
    return _command_element(0x0000, _UL.pack(len(body))) + body


def encode_find_response(primitive: object) -> tuple[bytes, bytes | None] | None:
    """The command set of a plain C-FIND-RSP (PS3.7 9.3.2.2), implicit VR little endian, and
    its identifier's bytes (None without one); None when the response carries more than the
    fixed elements. A C-FIND answer is one of these per match: on 10,000 matches, building
    each command as a pydicom Dataset and encoding it twice was most of the node's time."""
    if not isinstance(primitive, C_FIND) or primitive.MessageIDBeingRespondedTo is None:
        return None
    if primitive.Status is None or not primitive.AffectedSOPClassUID:
        return None
    if any(getattr(primitive, name, None) for name in primitive.STATUS_OPTIONAL_KEYWORDS):
        return None  # an error comment, offending element...: pynetdicom writes those
    identifier = primitive.Identifier
    data = identifier.getvalue() if identifier is not None else None
    return find_response_command(primitive.AffectedSOPClassUID,
                                 primitive.MessageIDBeingRespondedTo, int(primitive.Status),
                                 has_identifier=data is not None), data


def find_response_command(sop_class_uid: str, message_id: int, status: int, *,
                          has_identifier: bool) -> bytes:
    """The command set of a plain C-FIND-RSP (PS3.7 9.3.2.2), implicit VR little endian."""
    body = b"".join([
        _command_element(0x0002, uid_bytes(sop_class_uid)),
        _command_element(0x0100, _US.pack(0x8020)),  # C-FIND-RSP
        _command_element(0x0120, _US.pack(message_id)),
        _command_element(0x0800, _US.pack(0x0001 if has_identifier else 0x0101)),
        _command_element(0x0900, _US.pack(status)),
    ])
    return _command_element(0x0000, _UL.pack(len(body))) + body


_RETRIEVE_RESPONSE: dict[type, int] = {C_MOVE: 0x8021, C_GET: 0x8010}  # CommandField (PS3.7 E.1)
# Number of Remaining, Completed, Failed and Warning Sub-operations (PS3.7 9.3.3.2, 9.3.4.2)
_COUNTS = ((0x1020, "NumberOfRemainingSuboperations"),
           (0x1021, "NumberOfCompletedSuboperations"),
           (0x1022, "NumberOfFailedSuboperations"), (0x1023, "NumberOfWarningSuboperations"))


def encode_retrieve_response(primitive: object) -> bytes | None:
    """The command set of a C-MOVE-RSP or C-GET-RSP with its sub-operation counts and no
    identifier (a pending response, or a final one without failures; PS3.7 9.3.3.2,
    9.3.4.2), implicit VR little endian; None for anything else. A retrieve sends one per
    instance."""
    field = _RETRIEVE_RESPONSE.get(type(primitive))
    if field is None:
        return None
    rsp = cast(C_MOVE, primitive)
    if (rsp.MessageIDBeingRespondedTo is None or rsp.Status is None
            or not rsp.AffectedSOPClassUID or rsp.Identifier is not None
            or rsp.ErrorComment or rsp.OffendingElement):
        return None
    return retrieve_response_command(
        field, rsp.AffectedSOPClassUID, rsp.MessageIDBeingRespondedTo, int(rsp.Status),
        [getattr(rsp, name) for _element, name in _COUNTS])


def retrieve_response_command(field: int, sop_class_uid: str, message_id: int, status: int,
                              counts: list[int | None]) -> bytes:
    """The command set of a C-MOVE-RSP (`field` 0x8021) or C-GET-RSP (0x8010) without an
    identifier, implicit VR little endian; `counts`: the Number of Remaining, Completed,
    Failed and Warning Sub-operations, None where absent (PS3.7 9.3.3.2, 9.3.4.2)."""
    elements = [
        _command_element(0x0002, uid_bytes(sop_class_uid)),
        _command_element(0x0100, _US.pack(field)),
        _command_element(0x0120, _US.pack(message_id)),
        _command_element(0x0800, _US.pack(0x0101)),  # no data set follows
        _command_element(0x0900, _US.pack(status)),
    ]
    for (element, _name), count in zip(_COUNTS, counts, strict=True):
        if count is not None:
            elements.append(_command_element(element, _US.pack(count)))
    body = b"".join(elements)
    return _command_element(0x0000, _UL.pack(len(body))) + body


def encode_store_request(primitive: C_STORE) -> bytes:
    """The command set of a C-STORE-RQ with a data set (PS3.7 9.3.1.1), implicit VR little
    endian, from `primitive`'s MessageID, AffectedSOPClassUID, AffectedSOPInstanceUID,
    Priority and the Move Originator's AE title and message ID when set.

    Raises ValueError when a required field is missing."""
    if (primitive.MessageID is None or not primitive.AffectedSOPClassUID
            or not primitive.AffectedSOPInstanceUID or primitive.Priority is None):
        raise ValueError("a C-STORE request needs its message ID, SOP class and instance "
                         "UIDs and priority")
    return store_request_command(
        primitive.AffectedSOPClassUID, primitive.AffectedSOPInstanceUID, primitive.MessageID,
        primitive.Priority, primitive.MoveOriginatorApplicationEntityTitle,
        primitive.MoveOriginatorMessageID)


def store_request_command(sop_class_uid: str, sop_instance_uid: str, message_id: int,
                          priority: int, originator_aet: str | None = None,
                          originator_id: int | None = None) -> bytes:
    """The command set of a C-STORE-RQ with a data set (PS3.7 9.3.1.1), implicit VR little
    endian; the Move Originator's AE title and message ID where given (not None, not
    empty). The values are written as given: the caller has them from the index."""
    elements = [
        _command_element(0x0002, uid_bytes(sop_class_uid)),
        _command_element(0x0100, _US.pack(0x0001)),  # C-STORE-RQ
        _command_element(0x0110, _US.pack(message_id)),
        _command_element(0x0700, _US.pack(priority)),
        _command_element(0x0800, _US.pack(0x0001)),  # a data set follows
        _command_element(0x1000, uid_bytes(sop_instance_uid)),
    ]
    if originator_aet:
        value = originator_aet.encode("ascii")
        elements.append(_command_element(0x1030, value + b" " * (len(value) % 2)))
    if originator_id is not None:
        elements.append(_command_element(0x1031, _US.pack(originator_id)))
    body = b"".join(elements)
    return _command_element(0x0000, _UL.pack(len(body))) + body


def _command_element(element: int, value: bytes) -> bytes:
    return _TAG_LENGTH.pack(0x0000, element, len(value)) + value
