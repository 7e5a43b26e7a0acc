"""Long life: ``--count`` short associations in a row, of two kinds, against one node.

  echo    associate, C-ECHO, release: a modality's or a monitor's verification;
  knock   connect and close at once, nothing sent: a load balancer's health check.

Starts the node (``ichtriage serve``, SQLite, no triage workers) on loopback, warms it up
with ``--warm-up`` of each kind, samples every process of the node (resident memory, threads,
open file descriptors: tests/processes.py), runs ``--count`` of each kind, waits for the node
to settle, and samples again. Long-running pynetdicom receivers have leaked threads and
sockets in exactly this way; the numbers show whether this one does.

The associations are spoken with a small raw-socket client (PS3.8 PDUs written by hand, one
thread): pynetdicom as the client can lose a fast response to its own reactor thread
(pynetdicom issue 842) and would then wait out its DIMSE timeout. A script that prints
numbers; the short version is tests/test_endurance_e2e.py.

    TCP_NODELAY=1 .venv/bin/python tests/benchmarks/bench_longlife.py [--count 10000]
"""

from __future__ import annotations

import argparse
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, for tests.*

from tests.nodeproc import NodeProcess, running_node
from tests.processes import Usage, node_usage, table

VERIFICATION = b"1.2.840.10008.1.1"
IMPLICIT_VR_LITTLE_ENDIAN = b"1.2.840.10008.1.2"
APPLICATION_CONTEXT = b"1.2.840.10008.3.1.1.1"
IMPLEMENTATION_CLASS = b"1.2.826.0.1.3680043.9.3811.3.0.4"  # pynetdicom's, as any peer may
_ITEM = struct.Struct(">BBH")  # item type, reserved, length (PS3.8 9.3.2)
_PDU = struct.Struct(">BBL")  # PDU type, reserved, length


def _item(kind: int, value: bytes) -> bytes:
    return _ITEM.pack(kind, 0, len(value)) + value


def _even(uid: bytes) -> bytes:
    return uid + b"\0" if len(uid) % 2 else uid


def associate_rq(calling: str, called: str) -> bytes:
    """An A-ASSOCIATE-RQ PDU proposing Verification in implicit VR little endian
    (PS3.8 9.3.2): context 1, maximum length 16384."""
    context = (bytes([1, 0, 0, 0]) + _item(0x30, VERIFICATION)
               + _item(0x40, IMPLICIT_VR_LITTLE_ENDIAN))
    user = _item(0x51, struct.pack(">L", 16384)) + _item(0x52, IMPLEMENTATION_CLASS)
    body = (struct.pack(">HH", 1, 0) + called.encode().ljust(16) + calling.encode().ljust(16)
            + bytes(32) + _item(0x10, APPLICATION_CONTEXT) + _item(0x20, context)
            + _item(0x50, user))
    return _PDU.pack(0x01, 0, len(body)) + body


def _element(element: int, value: bytes) -> bytes:
    return struct.pack("<HHL", 0, element, len(value)) + value


def echo_rq(message_id: int = 1) -> bytes:
    """A P-DATA-TF carrying a C-ECHO-RQ command set (PS3.7 9.3.5), implicit VR little endian,
    on presentation context 1."""
    elements = (_element(0x0002, _even(VERIFICATION)) + _element(0x0100, b"\x30\x00")
                + _element(0x0110, struct.pack("<H", message_id))
                + _element(0x0800, b"\x01\x01"))
    command = _element(0x0000, struct.pack("<L", len(elements))) + elements
    pdv = struct.pack(">LBB", len(command) + 2, 1, 0x03) + command
    return _PDU.pack(0x04, 0, len(pdv)) + pdv


RELEASE_RQ = _PDU.pack(0x05, 0, 4) + bytes(4)


def _read_exactly(sock: socket.socket, count: int) -> bytes:
    data = bytearray()
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {count} bytes")
        data += chunk
    return bytes(data)


def read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    kind, _, length = _PDU.unpack(_read_exactly(sock, 6))
    return kind, _read_exactly(sock, length)


def echo_status(body: bytes) -> int | None:
    """The Status (0000,0900) of the command in a P-DATA-TF body; None without one."""
    offset = 6  # PDV length (4), context ID, message control header
    while offset + 8 <= len(body):
        _group, element, length = struct.unpack_from("<HHL", body, offset)
        if element == 0x0900:
            return int(struct.unpack_from("<H", body, offset + 8)[0])
        offset += 8 + length
    return None


class Echo:
    """Associate, C-ECHO, release, over one TCP connection; raises on anything unexpected."""

    def __init__(self, port: int, *, calling: str = "LONGLIFE", called: str = "ICHTRIAGE",
                 timeout: float = 30.0) -> None:
        self.port = port
        self.timeout = timeout
        self.request = associate_rq(calling, called)
        self.echo = echo_rq()

    def __call__(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(self.request)
            kind, _ = read_pdu(sock)
            if kind != 0x02:
                raise ConnectionError(f"association not accepted (PDU type 0x{kind:02X})")
            sock.sendall(self.echo)
            kind, body = read_pdu(sock)
            if kind != 0x04 or echo_status(body) != 0x0000:
                raise ConnectionError(f"C-ECHO not answered with success (PDU 0x{kind:02X})")
            sock.sendall(RELEASE_RQ)
            kind, _ = read_pdu(sock)
            if kind != 0x06:
                raise ConnectionError(f"release not confirmed (PDU type 0x{kind:02X})")


def knock(port: int) -> None:
    """Connect and close at once, as a TCP health check does."""
    socket.create_connection(("127.0.0.1", port), timeout=30).close()


def repeat(action: Callable[[], None], count: int) -> float:
    """Run `action` `count` times in a row; the seconds it took."""
    start = time.perf_counter()
    for _ in range(count):
        action()
    return time.perf_counter() - start


def settled(node: NodeProcess, *, interval: float = 0.5,
            timeout: float = 30.0) -> dict[int, Usage]:
    """The node's processes once their threads and descriptors have stopped changing for
    `interval` seconds (the last associations' threads end a moment after their peers
    left), or after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    before = node_usage(node.proc.pid)
    while True:
        time.sleep(interval)
        now = node_usage(node.proc.pid)
        if time.monotonic() > deadline or all(
                pid in before and (u.threads, u.fds) == (before[pid].threads, before[pid].fds)
                for pid, u in now.items()):
            return now
        before = now


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000, help="of each kind")
    parser.add_argument("--warm-up", type=int, default=200, help="of each kind, first")
    parser.add_argument("--receivers", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ichtriage-longlife-") as tmp_name:
        with running_node(Path(tmp_name), receivers=args.receivers) as node:
            started = node_usage(node.proc.pid)
            echo = Echo(node.port)
            repeat(echo, args.warm_up)
            repeat(lambda: knock(node.port), args.warm_up)
            warm = settled(node)
            echo_seconds = repeat(echo, args.count)
            knock_seconds = repeat(lambda: knock(node.port), args.count)
            after = settled(node)
            echo()  # the node still serves
            states = node.query("select state, count(*) from association group by state")
        print(f"long life: {args.count} echo associations in {echo_seconds:.1f} s "
              f"({args.count / echo_seconds:.0f}/s), {args.count} connect-and-close in "
              f"{knock_seconds:.1f} s ({args.count / knock_seconds:.0f}/s), after "
              f"{args.warm_up} of each to warm up")
        print(f"  association rows by state: {dict((str(s), int(str(n))) for s, n in states)}")
        print("  after start-up -> after the warm-up:")
        for line in table(started, warm):
            print("   ", line)
        print(f"  after the warm-up -> after {args.count} of each:")
        for line in table(warm, after):
            print("   ", line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
