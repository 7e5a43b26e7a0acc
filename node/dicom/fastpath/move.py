"""The node's C-MOVE SCP loop (PS3.4 C.4.2.3): pynetdicom's, with its sub-operations sent
and counted without pydicom.

pynetdicom 3.0.4 `QueryRetrieveServiceClass._move_scp` sends each instance the handler
yields with `send_c_store`, reads the C-STORE response into a status Dataset, validates
the handler's status and builds a C-MOVE-RSP primitive per sub-operation. `MoveSCP` follows
it step by step (the same event, statuses, sub-operations in the same order, final responses
with the same counts and Failed SOP Instance UID List; tests/qr/test_move_loop.py and
test_move_statuses.py run both on the same moves), except that, for a `StoredFile` its
destination takes as stored:

- the C-STORE-RQ is the file's bytes written straight into P-DATA-TF PDUs
  (`WakingAssociation.stored_message`), and the next instance is read while the peer
  stores this one (`Prepared`): the handler is asked for it before the response comes;
- the sub-association's reactor is paused once for the whole move, not per instance;
- the response is read as its status code (`StoreDIMSE` reads a plain C-STORE-RSP without
  pydicom), and pending C-MOVE-RSPs are written as their PDU (`retrieve_response_command`):
  the first after the first sub-operation, then at most one each PENDING_INTERVAL, each
  with the counts of that moment. The final response is pynetdicom's, counts and all.

A C-CANCEL that comes while a response is awaited stops the move before the next instance
(read ahead, not sent) goes, with 0xFE00 as the node's handler answers a cancel: the counts
are those of pynetdicom's loop, which would have asked the handler, seen the cancel and
sent nothing more. Anything else (another data set,
a destination that needs the file converted) goes through `send_c_store` as in pynetdicom.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Iterator
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom._globals import STATUS_PENDING
from pynetdicom.dimse_primitives import C_MOVE
from pynetdicom.presentation import PresentationContext
from pynetdicom.service_class import QueryRetrieveServiceClass, attempt

from node.dicom.fastpath.association import StoredFile, WakingAssociation
from node.dicom.fastpath.dimse import retrieve_response_command
from node.dicom.fastpath.pdu import message_pdus
from node.dicom.fastpath.suboperations import Counts, final_response, last_response

logger = logging.getLogger(__name__)

C_MOVE_RSP = 0x8021  # Command Field (PS3.7 E.1)
CANCEL = 0xFE00  # Cancel: sub-operations terminated (PS3.4 C.4.2.1.5)
# Pending responses are optional (PS3.4 C.4.2.3.1): one per sub-operation cost the node and
# the requestor a message each, on the move's critical path; this is ample for progress.
PENDING_INTERVAL = 0.05  # s between pending C-MOVE-RSPs after the first
_END, _DONE = object(), object()  # _step's outcomes: leave the loop; the move has ended


class Prepared:
    """The next instance, read ahead: its place among the handler's yields, what the
    handler yielded, and the C-STORE-RQ's PDUs (None when it goes through send_c_store;
    `error` when the file could not be read)."""

    def __init__(self, index: int, item: tuple[Any, Any]) -> None:
        self.index = index
        self.item = item
        self.encoded: bytes | None = None
        self.error: Exception | None = None


class MoveSCP:
    """One C-MOVE request served (`run`), on the fast path's association `service.assoc`."""

    def __init__(self, service: QueryRetrieveServiceClass, req: C_MOVE,
                 context: PresentationContext) -> None:
        self.service = service
        self.assoc = service.assoc
        self.req = req
        self.cx_id = cast(int, context.context_id)
        self.context = context
        self.syntax = context.transfer_syntax[0]
        self.rsp = C_MOVE()
        self.rsp.MessageID = req.MessageID
        self.rsp.MessageIDBeingRespondedTo = req.MessageID
        self.rsp.AffectedSOPClassUID = req.AffectedSOPClassUID
        self._plain = True  # the handler's status was a code, not a Dataset
        self._pending_at: float | None = None  # when the last pending response went

    def run(self) -> None:
        """pynetdicom 3.0.4 `_move_scp` up to the association with the destination (the
        same statuses for each handler error), then `_loop`."""
        rsp, dimse = self.rsp, self.service.dimse
        with attempt(rsp, dimse, self.cx_id, self.assoc) as ctx:
            ctx.error_msg = "Exception in handler bound to 'evt.EVT_C_MOVE'"
            ctx.error_status = 0xC511
            generator = evt.trigger(ctx.assoc, evt.EVT_C_MOVE, {
                "request": self.req, "context": self.context.as_tuple,
                "_is_cancelled": self.service.is_cancelled})
        if not ctx.success or not self.assoc.is_established:
            return
        generator = cast(Iterator[Any], generator)
        with attempt(rsp, dimse, self.cx_id) as ctx:
            ctx.error_msg = ("The C-MOVE request handler must yield the (address, port) of "
                             "the destination AE, then yield the number of sub-operations, "
                             "then yield (status, dataset) pairs.")
            ctx.error_status = 0xC514
            destination = next(generator)
        if not ctx.success or not self.assoc.is_established:
            return
        with attempt(rsp, dimse, self.cx_id) as ctx:
            ctx.error_msg = ("The handler bound to 'evt.EVT_C_MOVE' yielded an invalid "
                             "destination AE (addr, port) or (addr, port, kwargs) value")
            ctx.error_status = 0xC515
            if None in destination[:2]:
                logger.error("unknown move destination %s", self.req.MoveDestination)
                rsp.Status = 0xA801
                dimse.send_msg(rsp, self.cx_id)
                return
        if not ctx.success:
            return
        with attempt(rsp, dimse, self.cx_id) as ctx:
            ctx.error_msg = ("The C-MOVE request handler yielded an invalid number of "
                             "sub-operations value")
            ctx.error_status = 0xC513
            total = int(next(generator))
        if not ctx.success or not self.assoc.is_established:
            return
        if total < 1 or total > 65535:  # the counts are US (PS3.7 9.3.3.2)
            if total < 1:
                rsp.NumberOfFailedSuboperations = rsp.NumberOfWarningSuboperations = 0
                rsp.NumberOfCompletedSuboperations = 0
            else:
                logger.error("The C-MOVE request handler yielded more than 65535 matches")
            rsp.Status = 0x0000 if total < 1 else 0xC516
            dimse.send_msg(rsp, self.cx_id)
            return
        store_assoc = self._associate(destination)
        if store_assoc is not None:
            self._loop(generator, store_assoc, Counts(total))

    def _associate(self, destination: Any) -> Any:
        """The association with the destination, or None when refused (0xA801 sent)."""
        with attempt(self.rsp, self.service.dimse, self.cx_id) as ctx:
            ctx.error_msg = ("The handler bound to 'evt.EVT_C_MOVE' yielded an invalid "
                             "destination AE (addr, port) or (addr, port, kwargs) value")
            ctx.error_status = 0xC515
            kwargs: dict[str, Any] = {"ae_title": self.req.MoveDestination}
            if len(destination) >= 3 and destination[2]:
                kwargs.update(destination[2])
            store_assoc = self.service.ae.associate(destination[0], destination[1], **kwargs)
        if not ctx.success:
            return None
        if not store_assoc.is_established:
            logger.error("Move SCP: Unable to associate with destination AE")
            self.rsp.Status = 0xA801
            self.service.dimse.send_msg(self.rsp, self.cx_id)
            if store_assoc.dul.socket is not None:  # pynetdicom leaves it to the collector
                store_assoc.dul.socket.close()
            return None
        return store_assoc

    def _loop(self, generator: Iterator[Any], store_assoc: Any, counts: Counts) -> None:
        """pynetdicom's loop over the handler's (status, dataset) yields (see the module)."""
        items = enumerate(self.service._wrap_handler(generator))
        ahead: Prepared | None = None
        try:
            while True:
                current = ahead if ahead is not None else _next(items)
                ahead = None
                if current is None:
                    break
                outcome = self._step(current, store_assoc, counts, items)
                if outcome is _DONE:
                    return  # the last response is sent
                if outcome is _END:
                    break
                ahead = cast(Prepared | None, outcome)
        finally:
            if isinstance(store_assoc, WakingAssociation):
                store_assoc.resume_reactor()
        store_assoc.release()
        if self.assoc.is_established:
            self._final_after_loop(counts)

    def _step(self, current: Prepared, store_assoc: Any, counts: Counts,
              items: Iterator[tuple[int, Any]]) -> object:
        """One yield: None to go on, the next yield read ahead, _END to leave the loop, or
        _DONE when the last response is sent."""
        result, exc = current.item
        if exc:
            logger.error("Exception in handler bound to 'evt.EVT_C_MOVE'")
            logger.error("\nTraceback (most recent call last):\n%s%s: %s",
                         "".join(traceback.format_tb(exc[2])),
                         getattr(exc[0], "__name__", "?"), exc[1])
            rsp_status, dataset = 0xC511, None
        else:
            rsp_status, dataset = cast(tuple[Any, Any], result)
        if not self.assoc.is_established:
            store_assoc.release()
            return _DONE
        if counts.remaining <= 0:
            logger.warning("Handler bound to 'evt.EVT_C_MOVE' yielded further (status, "
                           "dataset) results but these will be ignored as the "
                           "sub-operations are complete")
            return _END
        self.rsp.Identifier = None
        self._plain = isinstance(rsp_status, int)
        rsp = self.service.validate_status(rsp_status, self.rsp)
        status = self.service.statuses.get(cast(int, rsp.Status))
        if status is None:  # an unknown status: sent as it is, the last response
            store_assoc.release()
            counts.set_on(self.rsp)
            self.service.dimse.send_msg(rsp, self.cx_id)
            return _DONE
        if status[0] != STATUS_PENDING:
            store_assoc.release()
            self._final(status[0], dataset, counts)
            return _DONE
        if not dataset:
            return None  # pynetdicom does nothing with a pending status without a data set
        return self._sub_operation(current, dataset, store_assoc, counts, items)

    def _sub_operation(self, current: Prepared, dataset: Any, store_assoc: Any,
                       counts: Counts, items: Iterator[tuple[int, Any]]) -> Prepared | None:
        """Send `dataset` as a C-STORE sub-operation, count it, send the pending response;
        the next yield, read while the destination stores this one."""
        status_code = int(cast(int, self.rsp.Status))
        if not isinstance(dataset, Dataset):
            logger.error("Received invalid dataset from callback")
            counts.failed += 1
            counts.failed_uids.append("")
            self._pending(status_code, counts)
            return None
        msg_id = self._message_id(current.index)
        ahead: Prepared | None = None
        store_status: int | None = None
        try:
            if current.encoded is None and current.error is None and isinstance(
                    dataset, StoredFile) and isinstance(store_assoc, WakingAssociation):
                current.encoded = store_assoc.stored_message(
                    dataset, msg_id, originator_aet=self.service.ae.ae_title,
                    originator_id=self.req.MessageID)
            if current.error is not None:
                raise current.error
            if current.encoded is not None and not store_assoc.is_established:
                # read ahead before the destination went: fails as send_c_store would
                raise RuntimeError("Failed to send a C-STORE request: the association with "
                                   "the move destination has ended")
            if current.encoded is not None:
                store_assoc.send_message(current.encoded)
                ahead = self._read_ahead(items, store_assoc)
                store_status = _status(store_assoc, store_assoc.store_response())
            else:
                store_status = _status_of(store_assoc.send_c_store(
                    dataset, msg_id=msg_id, originator_aet=self.service.ae.ae_title,
                    originator_id=self.req.MessageID))
        except Exception as exc:  # noqa: BLE001 (pynetdicom: any error fails the sub-operation)
            logger.warning("C-STORE sub-operation failed: %s", exc)
        counts.add(store_status, _instance_uid(dataset))
        self._pending(status_code, counts)
        if (ahead is not None and ahead.encoded is not None
                and self.req.MessageID in self.service.dimse.cancel_req):
            # a cancel came while the response was awaited: the instance read ahead is not
            # sent, and the move ends as the handler would end it had it been asked now
            self.service.is_cancelled(cast(int, self.req.MessageID))
            logger.info("C-MOVE cancelled: %d sub-operations not sent", counts.remaining)
            return Prepared(ahead.index, ((CANCEL, None), None))
        return ahead

    def _read_ahead(self, items: Iterator[tuple[int, Any]], store_assoc: Any
                    ) -> Prepared | None:
        """The next yield, its file read and its C-STORE-RQ made when it is a StoredFile."""
        ahead = _next(items)
        if ahead is None:
            return None
        result, exc = ahead.item
        if exc or not isinstance(result, tuple) or len(result) != 2:
            return ahead
        stored = result[1]
        if isinstance(stored, StoredFile) and isinstance(store_assoc, WakingAssociation):
            try:
                ahead.encoded = store_assoc.stored_message(
                    stored, self._message_id(ahead.index),
                    originator_aet=self.service.ae.ae_title, originator_id=self.req.MessageID)
            except Exception as exc:  # noqa: BLE001 (a failed sub-operation, counted in turn)
                ahead.error = exc
        return ahead

    def _message_id(self, index: int) -> int:
        """The C-STORE-RQ's Message ID for the handler's `index`th yield, as pynetdicom
        numbers them (US: wraps past 65535)."""
        msg_id = cast(int, self.req.MessageID) + index + 1
        return msg_id - 65535 if msg_id > 65535 else msg_id

    def _pending(self, status: int, counts: Counts) -> None:
        """The pending C-MOVE-RSP after a sub-operation, with its counts (PS3.4 C.4.2.3.1),
        written as its PDU (a status that came as a Dataset goes pynetdicom's way): after
        the first sub-operation, then at most one each PENDING_INTERVAL."""
        counts.sent_any = True
        now = time.monotonic()
        if self._pending_at is not None and now - self._pending_at < PENDING_INTERVAL:
            return
        self._pending_at = now
        send_encoded = getattr(self.assoc.dul, "send_encoded", None)
        if not self._plain or send_encoded is None:
            counts.set_on(self.rsp)
            self.service.dimse.send_msg(self.rsp, self.cx_id)
            return
        command = retrieve_response_command(
            C_MOVE_RSP, str(self.rsp.AffectedSOPClassUID),
            cast(int, self.rsp.MessageIDBeingRespondedTo), status,
            [counts.remaining, counts.completed, counts.failed, counts.warning])
        send_encoded(b"".join(message_pdus(self.cx_id, command, None,
                                           self.service.dimse.maximum_pdu_size)))

    def _final(self, kind: str, dataset: Any, counts: Counts) -> None:
        """The last response for a cancel, failure, warning or success the handler yielded.
        """
        final_response(self.rsp, kind, dataset, counts, self.syntax)
        self._send_final(counts)

    def _final_after_loop(self, counts: Counts) -> None:
        """The last response once the handler has no more (PS3.4 C.4.2.1.5)."""
        last_response(self.rsp, counts, self.syntax)
        self._send_final(counts)

    def _send_final(self, counts: Counts) -> None:
        logger.info("C-MOVE response 0x%04X: %d completed, %d failed, %d warning, %d left",
                    int(cast(int, self.rsp.Status)), counts.completed, counts.failed,
                    counts.warning, counts.remaining)
        self.service.dimse.send_msg(self.rsp, self.cx_id)


def _next(items: Iterator[tuple[int, Any]]) -> Prepared | None:
    try:
        index, item = next(items)
    except StopIteration:
        return None
    return Prepared(index, item)


def _status(store_assoc: Any, rsp: Any) -> int | None:
    """The status of a C-STORE response primitive; None without one, or for an invalid one
    (pynetdicom's check then logs it and aborts the association)."""
    if rsp is None:
        return None
    if rsp.is_valid_response:
        return int(rsp.Status)
    store_assoc._check_received_status(rsp)
    return None


def _status_of(status: Dataset) -> int | None:
    value = getattr(status, "Status", None)
    return int(value) if value is not None else None


def _instance_uid(dataset: Any) -> str | None:
    """What pynetdicom lists for a failed sub-operation: the SOP Instance UID, if any."""
    return getattr(dataset, "SOPInstanceUID", None)
