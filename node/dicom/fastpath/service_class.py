"""pynetdicom's Query/Retrieve service class (PS3.4 C.4) with C-FIND responses written in runs.

A C-FIND answer is one pending response per match. pynetdicom encodes each identifier with
pydicom (about 200 us for six keys, where the index read is 20 us), and queues each response
to the upper layer thread, which wakes, runs its state machine and writes one small PDU: on
10,000 matches, the node spent more time handing responses between its two threads than
Orthanc spent answering. Here (`QueryRetrieveService._c_find_scp`, following pynetdicom 3.0.4
`_c_find_scp`: the same event, statuses, order and final response):
- the handler may yield identifiers as bytes (`answers_in_runs`; the node's handler then
  yields `ResponseTemplate.encoded`); a Dataset made of raw elements in the negotiated
  encoding is written by `encode_identifier`, any other by pydicom: byte for byte the same
  (tests/test_fastpath_pdu.py);
- pending responses are written as P-DATA-TF PDUs and handed to the upper layer in runs
  (`Run`): the first at once (the time to the first response stays short), then every
  RUN_BYTES or RUN_SECONDS, and before any other response.
C-MOVE goes through the node's loop (`node.dicom.fastpath.move`) unless pynetdicom logs or
handlers watch each message; C-GET keeps pynetdicom's code, its sub-operations sped by
`node.dicom.fastpath.association`.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Iterator
from typing import Any, cast

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pynetdicom import _config, evt
from pynetdicom._globals import STATUS_PENDING, STATUS_WARNING
from pynetdicom.dimse_primitives import C_FIND, C_MOVE
from pynetdicom.dsutils import encode
from pynetdicom.presentation import PresentationContext
from pynetdicom.service_class import QueryRetrieveServiceClass, attempt

from node.dicom.fastpath.dimse import find_response_command
from node.dicom.fastpath.pdu import message_pdus, single_pdu
from node.dicom.qr_identifiers import element_header

logger = logging.getLogger(__name__)

# Handlers that want to see each message, PDU or byte sent: with any bound, pynetdicom's way
SENT_EVENTS = (evt.EVT_DIMSE_SENT, evt.EVT_PDU_SENT, evt.EVT_DATA_SENT, evt.EVT_FSM_TRANSITION)
RUN_BYTES = 32 * 1024  # pending responses handed to the upper layer at once, at most
RUN_SECONDS = 0.05  # ... or once the oldest has waited this long



def answers_in_runs(assoc: Any) -> bool:
    """Whether `QueryRetrieveService` answers a C-FIND on `assoc` in runs: when pynetdicom
    is not to log identifiers and no handler watches what is sent. Its EVT_C_FIND handler may
    then yield each identifier as bytes, already encoded in the negotiated transfer syntax
    (`ResponseTemplate.encoded`), instead of a Dataset."""
    return not (_config.LOG_REQUEST_IDENTIFIERS or _config.LOG_RESPONSE_IDENTIFIERS
                or any(assoc.get_handlers(event) for event in SENT_EVENTS))


class QueryRetrieveService(QueryRetrieveServiceClass):
    """pynetdicom's Query/Retrieve service class, its C-FIND writing responses in runs and
    its C-MOVE sub-operations sent by `node.dicom.fastpath.move.MoveSCP`."""

    def _move_scp(self, req: C_MOVE, context: PresentationContext) -> None:
        if not answers_in_runs(self.assoc):  # pynetdicom logs or handlers see each message
            super()._move_scp(req, context)
            return
        from node.dicom.fastpath.move import MoveSCP  # it imports association, which imports us

        MoveSCP(self, req, context).run()

    def _c_find_scp(self, req: C_FIND, context: PresentationContext) -> None:
        if not answers_in_runs(self.assoc):
            super()._c_find_scp(req, context)
            return
        cx_id = cast(int, context.context_id)
        rsp = C_FIND()
        rsp.MessageID = req.MessageID
        rsp.MessageIDBeingRespondedTo = req.MessageID
        rsp.AffectedSOPClassUID = req.AffectedSOPClassUID
        with attempt(rsp, self.dimse, cx_id, self.assoc) as ctx:
            ctx.error_msg = "Exception in handler bound to 'evt.EVT_C_FIND'"
            ctx.error_status = 0xC311
            generator = evt.trigger(ctx.assoc, evt.EVT_C_FIND, {
                "request": req, "context": context.as_tuple, "_is_cancelled": self.is_cancelled})
        if not ctx.success or not self.assoc.is_established:
            return
        if generator is None:
            generator = iter([(0x0000, None)])
        if self._answer(cast(Iterator[Any], generator), rsp, context):
            rsp.Identifier = None
            rsp.Status = 0x0000
            self.dimse.send_msg(rsp, cx_id)

    def _answer(self, generator: Iterator[Any], rsp: C_FIND, context: PresentationContext
                ) -> bool:
        """Send the handler's responses; True when the final success is still to send."""
        cx_id = cast(int, context.context_id)
        syntax = context.transfer_syntax[0]
        run = Run(self.assoc, cx_id, str(rsp.AffectedSOPClassUID),
                  cast(int, rsp.MessageIDBeingRespondedTo))
        for result, exc in self._wrap_handler(generator):
            rsp.Identifier = None
            rsp_status: int | Dataset
            if exc:
                logger.error("Exception in handler bound to 'evt.EVT_C_FIND'")
                logger.error("\nTraceback (most recent call last):\n%s%s: %s",
                             "".join(traceback.format_tb(exc[2])),
                             getattr(exc[0], "__name__", "?"), exc[1])
                rsp_status, dataset = 0xC311, None
            else:
                rsp_status, dataset = cast(tuple[Any, Any], result)
            if not self.assoc.is_established:
                return False
            rsp = self.validate_status(rsp_status, rsp)
            status = self.statuses.get(cast(int, rsp.Status))
            if status is not None and status[0] == STATUS_PENDING:
                identifier = (dataset if isinstance(dataset, bytes)
                              else _identifier(cast(Dataset, dataset), syntax))
                if identifier:
                    run.add(int(cast(int, rsp.Status)), identifier)
                    continue
                logger.error("Failed encoding the response 'Identifier' dataset")
                rsp.Status = 0xC312
            run.flush()
            self.dimse.send_msg(rsp, cx_id)
            if status is None or status[0] != STATUS_WARNING:
                return False  # cancel, failure, success, an unknown status: the last response
        run.flush()
        return self.assoc.is_established


class Run:
    """Pending C-FIND responses of one request, written as P-DATA-TF PDUs and handed to the
    upper layer together (see the module)."""

    def __init__(self, assoc: Any, context_id: int, sop_class_uid: str, message_id: int
                 ) -> None:
        self.assoc = assoc
        self.context_id = context_id
        self.max_pdu = int(assoc.dimse.maximum_pdu_size or 0)
        self._sop_class = sop_class_uid
        self._message_id = message_id
        self._commands: dict[int, bytes] = {}
        self._pieces: list[bytes | memoryview] = []
        self._size = 0
        self._since = 0.0
        self._sent = 0

    def add(self, status: int, identifier: bytes) -> None:
        command = self._commands.get(status)
        if command is None:
            command = self._commands[status] = find_response_command(
                self._sop_class, self._message_id, status, has_identifier=True)
        length = 12 + len(command) + len(identifier)
        if self.max_pdu and length > self.max_pdu:
            self._pieces += message_pdus(self.context_id, command, identifier, self.max_pdu)
        else:  # one P-DATA-TF, two PDV items: the command, then the identifier (PS3.8 9.3.5)
            self._pieces.append(single_pdu(self.context_id, command, identifier))
        if not self._size:
            self._since = time.monotonic()
        self._size += length + 6
        if (not self._sent or self._size >= RUN_BYTES
                or time.monotonic() - self._since >= RUN_SECONDS):
            self.flush()

    def flush(self) -> None:
        if self._pieces:
            self.assoc.dul.send_encoded(b"".join(self._pieces))
            self._sent += 1
        self._pieces = []
        self._size = 0


def _identifier(dataset: Dataset, syntax: Any) -> bytes:
    """`dataset` encoded in the negotiated transfer syntax: directly when it is made of raw
    elements in that encoding, else by pydicom (b"" when it cannot)."""
    if not isinstance(dataset, Dataset):
        return b""
    if not syntax.is_deflated and syntax.is_little_endian:
        encoded = encode_identifier(dataset, implicit=syntax.is_implicit_VR)
        if encoded is not None:
            return encoded
    return cast(bytes, encode(dataset, syntax.is_implicit_VR, syntax.is_little_endian,
                              syntax.is_deflated) or b"")


def encode_identifier(dataset: Dataset, *, implicit: bool) -> bytes | None:
    """The bytes pydicom writes for `dataset` in little endian, implicit or explicit VR, when
    every element is a RawDataElement already in that encoding with an even-length value
    (what ResponseTemplate builds); None for any other data set (pydicom must write it)."""
    pieces: list[bytes] = []
    for tag in sorted(dataset.keys(), key=int):
        elem = dataset.get_item(tag)
        if isinstance(elem, RawDataElement):
            if (elem.is_implicit_VR != implicit or not elem.is_little_endian
                    or elem.VR is None or elem.VR == "SQ"):
                return None
            value = elem.value or b""
            if len(value) % 2 or len(value) != elem.length:
                return None
        else:  # pydicom decodes Specific Character Set as it reads the data set's encoding
            value = _code_string(elem)
            if value is None:
                return None
        try:
            pieces.append(element_header(tag, elem.VR, len(value), implicit=implicit))
        except ValueError:
            return None
        pieces.append(value)
    return b"".join(pieces)


def _code_string(elem: DataElement) -> bytes | None:
    """The bytes of a decoded CS element of ASCII values (PS3.5 6.2), padded with a space;
    None for any other element."""
    if elem.VR != "CS":
        return None
    values = [elem.value] if isinstance(elem.value, str) else list(elem.value or [])
    if not all(isinstance(v, str) and v.isascii() and "\\" not in v for v in values):
        return None
    value = "\\".join(values).encode()
    return value + b" " * (len(value) % 2)

