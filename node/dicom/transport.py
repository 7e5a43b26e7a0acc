"""pynetdicom's acceptor, with its idle loops woken by events instead of timers.

pynetdicom 3.0 runs two loops per association, each sleeping 1 ms whenever it has nothing to
do: the upper layer (DUL) thread, which reads PDUs and sends what is queued, and the
association thread, which serves DIMSE messages. A C-STORE therefore waits up to 1 ms before
it is served and up to 1 ms more before its response leaves, where a whole 512 KB instance
takes about 4 ms on loopback; and every open association wakes its two threads 2000 times a
second while idle (eight idle associations kept 0.66 of the machine's two cores busy). Here
both loops wait on what they serve instead: the DUL on its socket and a wake-up pipe, the
association on its DIMSE message queue, which the DUL also signals when it passes up a
release or abort or stops. Timers (ARTIM, idle, release and abort checks) are looked at
every TIMER_TICK; they count in seconds.

Each association also gets the server's presentation contexts as a new list of the same,
read-only context objects rather than a deep copy (22 ms per association for the node's 171
contexts; negotiation only reads them and builds new result contexts); reads each PDU with
as few system calls as the kernel allows (`BulkReadSocket`); and reads C-STORE requests and
writes their responses without pydicom Datasets (`node.dicom.store_dimse`).

The overridden methods follow pynetdicom 3.0.4 (pinned in pyproject.toml) line by line apart
from the waits; tests/test_transport.py runs associations, releases and aborts through them.
"""

from __future__ import annotations

import logging
import queue
import select
import socket
import ssl
import struct
import threading
from datetime import datetime
from typing import Any, cast

from pynetdicom import evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom._handlers import (
    standard_dimse_recv_handler,
    standard_dimse_sent_handler,
    standard_pdu_recv_handler,
    standard_pdu_sent_handler,
)
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket, RequestHandler

from node.dicom.store_dimse import StoreDIMSE

logger = logging.getLogger(__name__)

# The longest either loop waits before it looks at its timers again.
TIMER_TICK = 0.05

# pynetdicom binds these to every association: they describe each PDU and DIMSE message for
# its debug log, and while one is bound to EVT_DIMSE_SENT a response cannot take the direct
# path below. They are left out unless pynetdicom's logger is at DEBUG.
_PYNETDICOM_LOG_HANDLERS = {
    evt.EVT_DIMSE_RECV: standard_dimse_recv_handler,
    evt.EVT_DIMSE_SENT: standard_dimse_sent_handler,
    evt.EVT_PDU_RECV: standard_pdu_recv_handler,
    evt.EVT_PDU_SENT: standard_pdu_sent_handler,
}


class _WakingQueue(queue.Queue[Any]):
    """A queue that pokes the upper layer's loop whenever something is put on it."""

    def __init__(self, wake: Any) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake()


_PDU_HEADER = struct.Struct(">BBL")
_PDV_LENGTH = struct.Struct(">L")
_PDU_EVENTS = (evt.EVT_DATA_RECV, evt.EVT_PDU_RECV, evt.EVT_FSM_TRANSITION)


def _pdv_items(body: bytes | bytearray) -> list[Any] | None:
    """The [context ID, data] items of a P-DATA-TF's body (PS3.8 9.3.5); None unless the
    items fill it exactly."""
    items: list[Any] = []
    offset, end = 0, len(body)
    with memoryview(body) as view:
        while offset < end:
            if offset + 6 > end:
                return None
            (length,) = _PDV_LENGTH.unpack_from(body, offset)
            if length < 2 or offset + 4 + length > end:
                return None
            items.append([body[offset + 4], bytes(view[offset + 5:offset + 4 + length])])
            offset += 4 + length
    return items or None


def _wake_reactor(assoc: Association) -> None:
    """Wake the association's reactor (WakingAssociation) if it is waiting for a message."""
    dimse = getattr(assoc, "dimse", None)
    if dimse is not None:
        with dimse.msg_queue.not_empty:
            dimse.msg_queue.not_empty.notify_all()


class WakingDUL(DULServiceProvider):
    """The upper layer reactor, sleeping in select() on its socket and a wake-up pipe."""

    def __init__(self, assoc: Association) -> None:
        super().__init__(assoc)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.event_queue = _WakingQueue(self.wake)
        self.to_provider_queue = _WakingQueue(self.wake)
        # Association primitives (release, abort) are for the association's reactor.
        self.to_user_queue = _WakingQueue(lambda: _wake_reactor(assoc))

    def wake(self) -> None:
        if threading.get_ident() == self.ident:
            return  # the loop itself queued it, and looks at its queues before it waits
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # already woken (full pipe) or shutting down

    def kill_dul(self) -> None:
        super().kill_dul()
        self.wake()

    def _wait(self) -> None:
        """Until the peer sends, something is queued, or a timer tick passes."""
        sock = self.socket.socket if self.socket is not None else None
        if sock is None or sock.fileno() < 0:
            select.select([self._wake_r], [], [], TIMER_TICK)
        elif isinstance(sock, ssl.SSLSocket) and sock.pending():
            return  # decrypted bytes already buffered: select() cannot see them
        else:
            select.select([sock, self._wake_r], [], [], TIMER_TICK)
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _read_pdu_data(self) -> None:
        # pynetdicom 3.0.4 DULServiceProvider._read_pdu_data, except that a P-DATA-TF on an
        # established association goes straight to DIMSE (what action DT-2 does) instead of
        # becoming a PDU object, an event, a state machine turn and a primitive: a tenth of
        # a receiving process's GIL samples on four associations.
        header = self._receive(6)
        if header is None:
            return
        try:
            pdu_type, _, pdu_length = _PDU_HEADER.unpack(header)
        except struct.error:
            self.event_queue.put("Evt17")
            return
        if pdu_type not in (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07):
            logger.error("unknown PDU type received: 0x%02X", pdu_type)
            self.event_queue.put("Evt19")
            return
        body = self._receive(pdu_length)
        if body is None:
            return
        if len(body) != pdu_length:
            logger.error("the received PDU is shorter than expected (%d of %d bytes)",
                         len(body) + 6, pdu_length + 6)
            self.event_queue.put("Evt17")
            return
        if pdu_type == 0x04 and self._data_goes_direct():
            values = _pdv_items(body)
            if values is not None:
                primitive = P_DATA()
                primitive.presentation_data_value_list = values
                self.assoc.dimse.receive_primitive(primitive)
                return
        try:
            pdu, event = self._decode_pdu(bytearray(header + body))
            self.event_queue.put(event)
        except Exception as exc:  # noqa: BLE001 - any decoding failure is an invalid PDU
            logger.error("unable to decode the received PDU: %s", exc)
            self.event_queue.put("Evt19")
            return
        self._recv_pdu.put(pdu)

    def _receive(self, count: int) -> bytes | bytearray | None:
        """Up to `count` bytes from the peer; None (and Evt17 queued) if the connection broke."""
        try:
            return cast(AssociationSocket, self.socket).recv(count)
        except (OSError, TimeoutError) as exc:
            logger.error("connection closed before the entire PDU was received: %s", exc)
            self.event_queue.put("Evt17")
            return None

    def _data_goes_direct(self) -> bool:
        """Whether a P-DATA-TF may skip the state machine: the association is established
        (Sta6, where it always goes to DIMSE), no earlier event waits, and no handler asks
        to see PDUs or transitions."""
        return (self.state_machine.current_state == "Sta6" and not self.event_queue.qsize()
                and not any(self.assoc.get_handlers(event) for event in _PDU_EVENTS))

    def run_reactor(self) -> None:
        try:
            self._run()
        finally:
            self._wake_r.close()
            self._wake_w.close()
            _wake_reactor(self.assoc)  # it ends when the DUL has

    def _run(self) -> None:
        # pynetdicom 3.0.4 DULServiceProvider.run_reactor, waiting in _wait() instead of
        # sleeping a fixed 1 ms.
        self._idle_timer.start()
        self.socket = cast(AssociationSocket, self.socket)
        idle = False
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
                idle = True
            if idle:
                self._wait()
            if self._kill_thread:
                break
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
            except Exception as exc:
                logger.error("exception in the upper layer reactor, aborting: %s", exc)
                logger.debug("upper layer reactor", exc_info=True)
                abort_pdu = A_ABORT_RQ()
                abort_pdu.source = 0x02
                abort_pdu.reason_diagnostic = 0x00
                self.socket.send(abort_pdu.encode())
                self.assoc.is_aborted = True
                self.assoc.is_established = False
                self.assoc._kill = True
                self._kill_thread = True
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                idle = True
                continue
            self.state_machine.do_action(event)
            idle = False


class WakingAssociation(Association):
    """An acceptor association whose reactor waits on its DIMSE message queue."""

    def __init__(self, ae: Any, mode: Any) -> None:
        super().__init__(ae, mode)
        self.dul = WakingDUL(self)
        self.dimse = StoreDIMSE(self)
        # The timeout setters configure the providers: run them again for the new ones.
        self.acse_timeout = self.ae.acse_timeout
        self.dimse_timeout = self.ae.dimse_timeout
        self.network_timeout = self.ae.network_timeout

    def kill(self) -> None:
        self._kill = True
        _wake_reactor(self)
        super().kill()

    def _run_reactor(self) -> None:
        # pynetdicom 3.0.4 Association._run_reactor, waiting on the message queue instead
        # of sleeping a fixed 1 ms.
        self._is_paused = False
        messages = self.dimse.msg_queue
        while not self._kill:
            with messages.not_empty:
                if not messages._qsize() and not self._kill and not self.dul.to_user_queue.qsize():
                    messages.not_empty.wait(TIMER_TICK)  # the queue's own lock is held: _qsize
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False

            context_id, msg = self.dimse.get_msg(block=False)
            if msg:
                self._serve_request(msg, cast(int, context_id))

            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            if self.acse.is_aborted():
                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            if not self.dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired():
                logger.error("network timeout reached; aborting the association")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return


class BulkReadSocket(AssociationSocket):
    """Reads a PDU with as few system calls as the kernel allows (pynetdicom reads 4 KiB at
    a time: 32 calls and copies per 128 KiB P-DATA-TF; 84 us against 19 us on loopback)."""

    def recv(self, nr_bytes: int) -> bytearray:
        sock = cast(socket.socket, self.socket)
        buffer = bytearray(nr_bytes)
        view = memoryview(buffer)
        read = 0
        try:
            while read < nr_bytes:
                count = sock.recv_into(view[read:], nr_bytes - read)
                if not count:  # the peer closed: return what arrived, as pynetdicom does
                    break
                read += count
        finally:
            view.release()
        if read < nr_bytes:
            del buffer[read:]
        return buffer


class WakingRequestHandler(RequestHandler):
    """Builds each accepted association as a WakingAssociation, and returns when it ends."""

    def handle(self) -> None:
        # pynetdicom's handle() starts the association's thread and returns at once, so the
        # server's request (and whatever counts requests, such as the supervisor's tally of
        # open associations per receiving process) would end long before the association.
        assoc = self._create_association()
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        assoc.start()
        assoc.join()

    def _create_association(self) -> Association:
        # pynetdicom 3.0.4 RequestHandler._create_association, with WakingAssociation and a
        # new list of the server's (read-only) contexts instead of a deep copy.
        server = cast(Any, self.server)
        assoc = WakingAssociation(self.ae, MODE_ACCEPTOR)
        assoc._server = server
        assoc.name = f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}"
        assoc.set_socket(BulkReadSocket(assoc, client_socket=cast(Any, self.request)))
        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        assoc.acceptor.supported_contexts = list(server.contexts)
        assoc.requestor.address_info = self.remote
        for event, handlers in server._handlers.items():
            if event.is_intervention and handlers:
                assoc.bind(event, *handlers)
            elif isinstance(event, evt.NotificationEvent):
                for handler, args in handlers:
                    assoc.bind(event, handler, args)
        if not logging.getLogger("pynetdicom").isEnabledFor(logging.DEBUG):
            # bound by the association itself and copied from the server: unbind drops both
            for event, handler in _PYNETDICOM_LOG_HANDLERS.items():
                assoc.unbind(event, handler)
        return assoc
