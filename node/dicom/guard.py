"""What a peer may make the node hold: every PDU checked against the node's limits as it is read.

An association's reader trusts nothing the peer claims before it is checked (PS3.8 9.3): the
PDU header's length is compared with the most the node accepts for that PDU type before a
byte of the body is read, bodies are read into memory only as they arrive, a PDU must arrive
whole within a deadline, and the data set of one DIMSE message (its P-DATA-TF fragments,
PS3.8 E.2) may not grow past a limit. A peer over a limit is sent an A-ABORT (PS3.8 9.3.8)
and its connection is dropped; the log line names its host, never patient data.

`GuardedSocket` replaces pynetdicom's `AssociationSocket` through its public `recv()`; both
receive paths (`node.dicom.fastpath` and pynetdicom's stock classes) read through it.
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
import time
from dataclasses import dataclass
from typing import Any, cast

from pynetdicom.association import Association
from pynetdicom.transport import AssociationSocket, RequestHandler

logger = logging.getLogger(__name__)

HEADER_LENGTH = 6  # PDU type, reserved, 4-byte length (PS3.8 9.3.1)
P_DATA_TF = 0x04
A_ASSOCIATE_RQ = 0x01
PDU_TYPES = frozenset({0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07})
# The largest non-data PDU the node reads: an A-ASSOCIATE-RQ proposes at most 128 contexts
# (odd IDs 1-255) of a few UIDs each, plus user information; DCMTK's storescu sends ~16 KiB.
MAX_CONTROL_PDU = 1 << 20
# The largest command set of one DIMSE message (PS3.7 9.3): a few hundred bytes in practice.
MAX_COMMAND_SET = 64 * 1024
# Bodies up to this size are read into one buffer made up front; longer ones grow as they come.
_PREALLOCATE = 256 * 1024
_CHUNK = 256 * 1024

# A-ABORT (PS3.8 9.3.8): source 2 = service provider; reasons (Table 9-26)
ABORT_UNRECOGNIZED_PDU = 0x01
ABORT_INVALID_PARAMETER = 0x06
_PDV_HEADER = struct.Struct(">LBB")


def abort_pdu(reason: int) -> bytes:
    """A service-provider A-ABORT PDU with `reason` (PS3.8 Table 9-26)."""
    return struct.pack(">BBLBBBB", 0x07, 0, 4, 0, 0, 0x02, reason)


class PeerLimitError(OSError):
    """A peer went past one of the node's limits; its association is aborted.

    pynetdicom's upper layer treats an OSError from `recv()` as a lost connection (Evt17).
    """


@dataclass(frozen=True)
class ReadLimits:
    """What one association may make the node hold or wait for.

    max_pdu: the largest P-DATA-TF body (bytes) accepted; the node's Maximum Length
        (PS3.8 D.1), 0 for unlimited.
    max_message: the largest data set of one DIMSE message, in bytes.
    request_timeout: seconds from connection to a complete A-ASSOCIATE-RQ (the ARTIM
        timer's role, PS3.8 9.1.5, enforced here because a read blocks the timer's loop).
    pdu_timeout: seconds a PDU may take to arrive once its header has started.
    """

    max_pdu: int = 128 * 1024
    max_message: int = 1 << 30
    request_timeout: float = 10.0
    pdu_timeout: float = 60.0

    def __post_init__(self) -> None:
        if self.max_pdu < 0 or self.max_message < 1:
            raise ValueError("max_pdu must be >= 0 and max_message >= 1")
        if self.request_timeout <= 0 or self.pdu_timeout <= 0:
            raise ValueError("request_timeout and pdu_timeout must be > 0")

    def body_limit(self, pdu_type: int) -> int:
        """The longest body accepted for a PDU of `pdu_type`, in bytes."""
        if pdu_type == P_DATA_TF and self.max_pdu:
            return self.max_pdu
        if pdu_type == P_DATA_TF:
            return self.max_message + MAX_COMMAND_SET
        return MAX_CONTROL_PDU


class GuardedSocket(AssociationSocket):
    """An acceptor's socket whose reads are checked against `ReadLimits` (see the module).

    pynetdicom's upper layer reads each PDU as recv(6) for the header, then recv(length) for
    the body; both of its versions here do. The guard looks at each header as it passes,
    refuses a body longer than the limit for its type before reading it, and counts the data
    set bytes of the message the P-DATA-TF items carry.
    """

    limits: ReadLimits

    @classmethod
    def adopt(cls, plain: AssociationSocket, limits: ReadLimits) -> GuardedSocket:
        """`plain`, an acceptor's socket pynetdicom made, reading through the guard.

        Takes over its state rather than running __init__ again, which would tell the state
        machine of a second connection (Evt5).
        """
        guarded = cls.__new__(cls)
        guarded.__dict__.update(plain.__dict__)
        guarded._guard(limits)
        return guarded

    def _guard(self, limits: ReadLimits) -> None:
        self.limits = limits
        self._request_deadline: float | None = time.monotonic() + limits.request_timeout
        self._pending: tuple[int, int] | None = None  # (type, length) of the header just read
        self._pdu_deadline = 0.0
        self._message_bytes = 0
        self._command_bytes = 0
        self.received = 0  # bytes read so far
        self.left_unused = False  # the peer closed before sending a byte
        # One wait per system call; the deadline is checked between calls, so a PDU that
        # trickles in ends within its deadline plus one wait.
        self._set_wait(min(limits.request_timeout, limits.pdu_timeout))

    @property
    def _host(self) -> str:
        return str(self.assoc.requestor.address)

    def recv(self, nr_bytes: int) -> bytearray:
        pending, self._pending = self._pending, None
        if pending is None or nr_bytes != pending[1]:
            self._pdu_deadline = self._deadline()
            data = self._read(nr_bytes, self._pdu_deadline)
            if nr_bytes == HEADER_LENGTH and len(data) == HEADER_LENGTH:
                self._check_header(bytes(data))
            return data
        body = self._read(nr_bytes, self._pdu_deadline)
        if len(body) == nr_bytes:
            if self._request_deadline is not None:
                self._request_deadline = None  # the association request is in
                self._set_wait(self.limits.pdu_timeout)
            if pending[0] == P_DATA_TF:
                self._count_data(body)
        return body

    def _set_wait(self, seconds: float) -> None:
        """How long one read may wait. A plain socket stays blocking with a kernel receive
        timeout (SO_RCVTIMEO: no poll() before each read, as Python's own timeouts make);
        a TLS socket takes Python's timeout."""
        sock = cast(socket.socket, self.socket)
        if isinstance(sock, ssl.SSLSocket):
            sock.settimeout(seconds)
            return
        sock.settimeout(None)
        whole = int(seconds)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                        struct.pack("ll", whole, int((seconds - whole) * 1_000_000)))

    def _deadline(self) -> float:
        deadline = time.monotonic() + self.limits.pdu_timeout
        if self._request_deadline is not None:
            deadline = min(deadline, self._request_deadline)
        return deadline

    def _check_header(self, header: bytes) -> None:
        pdu_type, _, length = struct.unpack(">BBL", header)
        if pdu_type not in PDU_TYPES:
            return  # the upper layer answers an unknown type itself (Evt19: A-ABORT)
        if self._request_deadline is not None and pdu_type != A_ASSOCIATE_RQ:
            self._refuse(f"PDU type 0x{pdu_type:02X} before an association request",
                         ABORT_UNRECOGNIZED_PDU)
        limit = self.limits.body_limit(pdu_type)
        if length > limit:
            self._refuse(f"PDU type 0x{pdu_type:02X} of {length} bytes, over the limit of "
                         f"{limit}", ABORT_INVALID_PARAMETER)
        self._pending = (pdu_type, length)

    def _count_data(self, body: bytearray) -> None:
        """Add the P-DATA-TF's fragments to the current message's totals (PS3.8 E.2)."""
        offset, end = 0, len(body)
        while offset + _PDV_HEADER.size <= end:
            length, _context, control = _PDV_HEADER.unpack_from(body, offset)
            if length < 2:
                return  # malformed: the upper layer refuses it
            fragment = length - 2
            if control & 0x01:
                self._command_bytes += fragment
                if self._command_bytes > MAX_COMMAND_SET:
                    self._refuse(f"a command set over {MAX_COMMAND_SET} bytes",
                                 ABORT_INVALID_PARAMETER)
                if control & 0x02:
                    self._command_bytes = 0
            else:
                self._message_bytes += fragment
                if self._message_bytes > self.limits.max_message:
                    self._refuse(f"a data set over {self.limits.max_message} bytes",
                                 ABORT_INVALID_PARAMETER)
                if control & 0x02:
                    self._message_bytes = 0
            offset += 4 + length

    def _read(self, count: int, deadline: float) -> bytearray:
        """Up to `count` bytes: fewer only if the peer closed. Memory grows as bytes arrive."""
        sock = cast(socket.socket, self.socket)
        buffer = bytearray(min(count, _PREALLOCATE))
        read = 0
        while read < count:
            if read == len(buffer):
                buffer.extend(bytes(min(count - read, _CHUNK)))
            if time.monotonic() >= deadline:
                self._timed_out(read, count)
            try:
                with memoryview(buffer) as view:
                    received = sock.recv_into(view[read:], len(buffer) - read)
            except (TimeoutError, BlockingIOError):  # the wait set by _set_wait ran out
                self._timed_out(read, count)
            if not received:
                if not self.received and not read:
                    self._left_unused()
                break  # the peer closed: return what arrived, as pynetdicom does
            read += received
            self.received += received
        if read < len(buffer):
            del buffer[read:]
        return buffer

    def _left_unused(self) -> None:
        """The peer closed without sending a byte, as a load balancer's TCP health check
        does: end the acceptor's wait for an association request now. pynetdicom's acceptor
        waits for the request on the upper layer's to_user_queue for its ACSE timeout and
        takes None as that timeout's end (Association.run_reactor): without this, each
        such connection held a thread and one of the node's association slots for
        `association_request_timeout`."""
        if self.left_unused:
            return
        self.left_unused = True
        self.assoc.dul.to_user_queue.put(cast(Any, None))

    def _timed_out(self, read: int, count: int) -> None:
        what = ("an association request" if self._request_deadline is not None
                else f"a PDU ({read} of {count} bytes)")
        logger.warning("association from %s aborted: %s not received in time", self._host, what)
        self._drop()
        raise PeerLimitError(f"{what} not received in time")

    def _refuse(self, why: str, reason: int) -> None:
        logger.warning("association from %s aborted: %s", self._host, why)
        try:
            cast(socket.socket, self.socket).sendall(abort_pdu(reason))
        except OSError:
            pass  # the peer is gone already; the connection is dropped either way
        self._drop()
        raise PeerLimitError(why)

    def _drop(self) -> None:
        """Close the connection: the upper layer takes the error for a connection the peer
        closed (Evt17), and so does not close it itself."""
        sock = cast(socket.socket, self.socket)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already reset by the peer
        sock.close()


class GuardedRequestHandler(RequestHandler):
    """pynetdicom's request handler with the association reading through a `GuardedSocket`,
    and returning only when the association has ended (so that whatever counts requests
    counts open associations).

    The server must have `read_limits` (a `ReadLimits`).
    """

    assoc: Association

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        self._guard(assoc)
        return assoc

    def _guard(self, assoc: Association) -> None:
        """Read `assoc`'s connection through a GuardedSocket (the server's `read_limits`)."""
        plain = cast(AssociationSocket, assoc.dul.socket)
        assoc.dul.socket = None  # set_socket() takes no second socket
        assoc.set_socket(GuardedSocket.adopt(plain, cast(Any, self.server).read_limits))
        self.assoc = assoc

    def finish(self) -> None:
        assoc = getattr(self, "assoc", None)
        if assoc is None:
            return
        if assoc.is_alive():
            assoc.join()
        sock = assoc.dul.socket
        if isinstance(sock, GuardedSocket) and sock.left_unused:
            logger.debug("connection from %s closed by the peer before an association "
                         "request (a health check?)", self.client_address[0])
        elif isinstance(sock, GuardedSocket) and not sock.received:
            # pynetdicom's ARTIM timer ended it (PS3.8 9.1.5); say whose connection it was
            logger.warning("connection from %s closed: no association request in %s s",
                           self.client_address[0], sock.limits.request_timeout)
