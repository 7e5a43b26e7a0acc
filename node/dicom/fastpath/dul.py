"""pynetdicom's upper layer (DUL, PS3.8 9) for the node's acceptors: woken by events, not timers.

pynetdicom 3.0 runs two loops per association, each sleeping 1 ms whenever it has nothing to
do: the upper layer (DUL) thread, which reads PDUs and sends what is queued, and the
association thread, which serves DIMSE messages. A C-STORE therefore waits up to 1 ms before
it is served and up to 1 ms more before its response leaves, where a whole 512 KB instance
takes about 4 ms on loopback; and every open association wakes its two threads 2000 times a
second while idle (eight idle associations kept 0.66 of the machine's two cores busy). Here
the DUL waits on its socket and a wake-up pipe; the association (`.association`) on its DIMSE
message queue, which the DUL also signals when it passes up a release or abort or stops.
Timers (ARTIM, idle, release and abort checks) are looked at every TIMER_TICK.

A P-DATA-TF on an established association goes straight to DIMSE (`_read_pdu_data`).
Follows pynetdicom 3.0.4 (`node.dicom.fastpath.UPSTREAM_VERSION`); every PDU is read through
`node.dicom.guard.GuardedSocket`, which checks it against the node's limits first.
"""

from __future__ import annotations

import logging
import queue
import select
import socket
import ssl
import struct
import threading
from collections import OrderedDict
from typing import Any, cast

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket

from node.dicom.fastpath.pdu import EncodedData
from node.dicom.guard import PeerLimitError

logger = logging.getLogger(__name__)

# The longest either loop waits before it looks at its timers again.
TIMER_TICK = 0.05

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


class AssociateRequests:
    """The last few decoded A-ASSOCIATE-RQ PDUs, by their bytes (per receiving process).

    A scanner or storescu sends the same request on every association (storescu: 9.6 KB,
    120-odd presentation contexts); decoding it is a quarter of an association's set-up CPU.
    pynetdicom only reads a decoded request (to_primitive() builds new objects each time;
    tests/test_fastpath.py checks it leaves the PDU as it was), so one decoded copy serves
    every association that sends those bytes.
    """

    SIZE = 32
    LARGEST = 64 * 1024  # larger requests are decoded every time

    def __init__(self) -> None:
        self._pdus: OrderedDict[bytes, A_ASSOCIATE_RQ] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: bytes) -> A_ASSOCIATE_RQ | None:
        with self._lock:
            pdu = self._pdus.get(key)
            if pdu is not None:
                self._pdus.move_to_end(key)
            return pdu

    def put(self, key: bytes, pdu: A_ASSOCIATE_RQ) -> None:
        with self._lock:
            self._pdus[key] = pdu
            while len(self._pdus) > self.SIZE:
                self._pdus.popitem(last=False)


ASSOCIATE_REQUESTS = AssociateRequests()


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


def wake_reactor(assoc: Association) -> None:
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
        self.to_user_queue = _WakingQueue(lambda: wake_reactor(assoc))
        # held while this thread runs the state machine (any action may send) or writes
        # encoded data, and while another thread writes directly (send_encoded)
        self._sending = threading.Lock()

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
        if sock is None or sock.fileno() < 0 or not cast(Any, self.socket)._is_connected:
            # a requestor's socket before it connects reads as ready: wait on the pipe
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

    def _process_recv_primitive(self) -> bool:
        # Encoded P-DATA-TF PDUs (node.dicom.fastpath.pdu.EncodedData) are written as they
        # are, where pynetdicom's action DT-1 (Sta6) or AR-7 (Sta8) would send a P-DATA-TF,
        # and dropped in any other state, where pynetdicom would not send it either. Any other
        # primitive takes pynetdicom's way.
        try:
            primitive = self.to_provider_queue.queue[0]
        except IndexError:
            return False
        if not isinstance(primitive, EncodedData):
            return bool(super()._process_recv_primitive())
        if self.event_queue.qsize():
            return False  # the state machine's earlier events first
        with self._sending:
            self.to_provider_queue.get(False)
            if self.state_machine.current_state in ("Sta6", "Sta8"):
                cast(AssociationSocket, self.socket).send(primitive.encoded)
            else:
                logger.warning("%d bytes of P-DATA not sent: the association is in %s",
                               len(primitive.encoded), self.state_machine.current_state)
        return True

    def send_encoded(self, encoded: bytes) -> None:
        """Send whole P-DATA-TF PDUs (`encoded`): written at once by the calling thread when
        the association is established, nothing waits to be sent before them and the
        connection is plain TCP; else queued as `EncodedData`, in order behind the rest.

        Written directly, a C-MOVE sub-operation or a run of C-FIND responses skips a
        hand-over to this thread and back (each a wake-up and a turn of the interpreter
        lock, which on a busy host costs more than the writing). Safe because this thread
        sends only under `_sending`, and pops what it sends under it too: a queued
        primitive is still counted by the queues until its write is under way.
        TLS sockets are written by this thread alone (an SSL object is not shared between
        a reading and a writing thread)."""
        sock = self.socket.socket if self.socket is not None else None
        if sock is not None and not isinstance(sock, ssl.SSLSocket):
            with self._sending:
                if (self.state_machine.current_state == "Sta6" and not self._kill_thread
                        and not self.to_provider_queue.qsize() and not self.event_queue.qsize()):
                    cast(AssociationSocket, self.socket).send(encoded)
                    return
        self.send_pdu(EncodedData(encoded))

    def _decode_pdu(self, bytestream: bytearray) -> tuple[Any, str]:
        # pynetdicom 3.0.4 DULServiceProvider._decode_pdu, remembering A-ASSOCIATE-RQs
        # (AssociateRequests) while no handler watches the data or the PDUs.
        if (bytestream[:1] != b"\x01" or len(bytestream) > AssociateRequests.LARGEST
                or any(self.assoc.get_handlers(e) for e in _PDU_EVENTS[:2])):
            return cast(tuple[Any, str], super()._decode_pdu(bytestream))
        key = bytes(bytestream)
        pdu = ASSOCIATE_REQUESTS.get(key)
        if pdu is None:
            decoded, event = super()._decode_pdu(bytestream)
            ASSOCIATE_REQUESTS.put(key, cast(A_ASSOCIATE_RQ, decoded))
            return decoded, event
        return pdu, "Evt6"

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
        except PeerLimitError:
            self.event_queue.put("Evt17")  # the guard said why, and sent the A-ABORT
            return None
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
            wake_reactor(self.assoc)  # it ends when the DUL has

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
                with self._sending:
                    self.socket.send(abort_pdu.encode())
                self.assoc.is_aborted = True
                self.assoc.is_established = False
                self.assoc._kill = True
                self._kill_thread = True
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                idle = not self.to_provider_queue.qsize()  # EncodedData queues no event
                continue
            with self._sending:
                self.state_machine.do_action(event)
            idle = False
