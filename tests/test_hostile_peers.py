"""A hostile or broken peer: each malformed PDU kind is refused, memory stays bounded, and a good
association is served at the same time, on both receive paths (node.dicom.guard)."""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from pynetdicom import _config, evt
from pynetdicom.transport import ThreadedAssociationServer

from node.dicom import fastpath
from node.dicom.guard import abort_pdu
from tests.factories import ct_slice
from tests.peers import LOOPBACK
from tests.scp import LimitedServer, scu, second_refused, start_server, stop_server, wait_idle

LIMITS = LimitedServer.read_limits
A_ABORT_INVALID = abort_pdu(0x06)


@pytest.fixture(autouse=True)
def no_log_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_config, "LOG_HANDLER_LEVEL", "none")


@pytest.fixture(params=fastpath.PATHS)
def server(request: pytest.FixtureRequest) -> Iterator[ThreadedAssociationServer]:
    srv = start_server(request.param, second_refused([]))
    yield srv
    stop_server(srv)


def raw_peer(srv: ThreadedAssociationServer) -> socket.socket:
    sock = socket.create_connection((LOOPBACK, srv.server_address[1]), timeout=10)
    return sock


def answer(sock: socket.socket) -> bytes:
    """Everything the node sends until it closes the connection (10 s at most)."""
    chunks = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        chunks.append(data)
    else:
        raise AssertionError("the node kept the connection open")
    sock.close()
    return b"".join(chunks)


def client_socket(assoc: Any) -> socket.socket:
    """The requestor's connection: pynetdicom leaves it open when shutting it down fails
    (a peer that aborted mid-send), so the test closes it."""
    sock: socket.socket = assoc.dul.socket.socket
    return sock


def good_association_works(srv: ThreadedAssociationServer) -> None:
    assoc = scu().associate(LOOPBACK, srv.server_address[1], ae_title="NODE")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


def with_good_association(srv: ThreadedAssociationServer, hostile: Callable[[], None]) -> None:
    """Run `hostile` while a good association is in use; it is answered throughout."""
    assoc = scu().associate(LOOPBACK, srv.server_address[1], ae_title="NODE")
    assert assoc.is_established
    statuses: list[int] = []
    done = threading.Event()

    def echo() -> None:  # more often than the test server's 1 s idle timeout
        while not done.wait(0.2):
            statuses.append(assoc.send_c_echo().Status)

    thread = threading.Thread(target=echo)
    thread.start()
    try:
        hostile()
    finally:
        done.set()
        thread.join()
    statuses.append(assoc.send_c_echo().Status)
    assert set(statuses) == {0x0000}
    assoc.release()
    good_association_works(srv)
    wait_idle(srv)


def test_truncated_header(server: ThreadedAssociationServer) -> None:
    def hostile() -> None:
        sock = raw_peer(server)
        sock.sendall(b"\x01\x00\x00")  # half a header, then the peer goes
        sock.shutdown(socket.SHUT_WR)
        assert answer(sock) == b""
    with_good_association(server, hostile)


def test_header_claiming_more_than_is_sent_times_out(server: ThreadedAssociationServer) -> None:
    def hostile() -> None:
        sock = raw_peer(server)
        sock.sendall(struct.pack(">BBL", 0x01, 0, 200) + b"\x00" * 20)  # 20 of 200, then silence
        started = time.monotonic()
        assert answer(sock) == b""
        # the association request deadline (1 s here), not the peer, ended it
        assert time.monotonic() - started < 8
    with_good_association(server, hostile)


def test_silent_connection_is_closed_after_the_request_timeout(
        server: ThreadedAssociationServer) -> None:
    def hostile() -> None:
        sock = raw_peer(server)
        assert answer(sock) == b""  # nothing sent at all
    with_good_association(server, hostile)


def test_connections_closed_before_a_byte_end_without_waiting_for_a_request(
        server: ThreadedAssociationServer, caplog: pytest.LogCaptureFixture) -> None:
    """A load balancer's TCP health check connects and closes: each ends as the peer
    leaves, not when the request timeout runs out (it held a thread and an association
    slot that long), and is no warning."""
    caplog.set_level(logging.DEBUG, logger="node.dicom.guard")

    def hostile() -> None:
        for _ in range(5):
            raw_peer(server).close()
        deadline = time.monotonic() + 10
        while (caplog.text.count("closed by the peer before an association request") < 5
               and time.monotonic() < deadline):
            time.sleep(0.02)  # each one's end is logged as its thread ends
    with_good_association(server, hostile)
    assert "no association request in" not in caplog.text


@pytest.mark.parametrize("pdu_type", [0x01, 0x04, 0x05])
def test_length_over_the_limit_is_aborted_before_it_is_read(
        server: ThreadedAssociationServer, pdu_type: int) -> None:
    def hostile() -> None:
        sock = raw_peer(server)
        sock.sendall(struct.pack(">BBL", pdu_type, 0, 0xFFFFFFF0))  # "4 GiB follow"
        reply = answer(sock)
        if pdu_type == 0x01:
            assert reply == A_ABORT_INVALID
        else:  # anything but an association request first is refused as such
            assert reply == abort_pdu(0x01)
    tracemalloc.start()
    try:
        with_good_association(server, hostile)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak  # nothing near the claimed 4 GiB was reserved


def test_data_pdu_over_the_negotiated_maximum_is_aborted(
        server: ThreadedAssociationServer) -> None:
    aborted = threading.Event()
    assoc = scu().associate(LOOPBACK, server.server_address[1], ae_title="NODE",
                            evt_handlers=[(evt.EVT_ABORTED, lambda event: aborted.set())])
    assert assoc.is_established
    raw = client_socket(assoc)
    raw.sendall(struct.pack(">BBL", 0x04, 0, LIMITS.max_pdu + 1))
    assert aborted.wait(10)
    raw.close()
    good_association_works(server)
    wait_idle(server)


def test_unknown_pdu_type_is_aborted(server: ThreadedAssociationServer) -> None:
    def hostile() -> None:
        sock = raw_peer(server)
        sock.sendall(struct.pack(">BBL", 0x55, 0, 4) + b"\x00" * 4)
        reply = answer(sock)
        assert reply[:1] in (b"", b"\x07")  # an A-ABORT or a plain close, never more
    with_good_association(server, hostile)


def test_data_before_the_association_is_aborted(server: ThreadedAssociationServer) -> None:
    def hostile() -> None:
        sock = raw_peer(server)
        pdv = struct.pack(">LBB", 6, 1, 0x03) + b"\x00" * 4
        sock.sendall(struct.pack(">BBL", 0x04, 0, len(pdv)) + pdv)
        assert answer(sock) == abort_pdu(0x01)
    with_good_association(server, hostile)


def test_data_set_over_the_message_limit_is_aborted(server: ThreadedAssociationServer) -> None:
    big = ct_slice(study_uid="1.2.3", series_uid="1.2.3.4", index=0)
    pixels = np.zeros((1024, 1024), dtype=np.uint16)  # 2 MiB, the limit here is 1 MiB
    big.Rows, big.Columns = pixels.shape
    big.PixelData = pixels.tobytes()
    aborted = threading.Event()
    assoc = scu().associate(LOOPBACK, server.server_address[1], ae_title="NODE",
                            evt_handlers=[(evt.EVT_ABORTED, lambda event: aborted.set())])
    assert assoc.is_established
    raw = client_socket(assoc)
    assoc.send_c_store(big)
    assert aborted.wait(10)
    raw.close()
    good_association_works(server)
    wait_idle(server)


def test_hand_parsed_length_fields_refuse_corrupt_bytes_cleanly() -> None:
    """The raw header reader, the C-STORE command set reader and the PDV item reader, fed
    corrupted and truncated encodings (seeded): each declines (RawHeaderError, None) or
    reads; none raises anything else or reads past its input."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    from node.dicom.fastpath.dimse import _command_elements
    from node.dicom.fastpath.dul import _pdv_items
    from node.dicom.header import RawHeaderError, read_header

    rng = np.random.default_rng(5)
    ds = ct_slice(study_uid="1.2.3", series_uid="1.2.3.4", index=1)
    for implicit in (False, True):
        buffer = DicomBytesIO()
        buffer.is_little_endian, buffer.is_implicit_VR = True, implicit
        write_dataset(buffer, ds)
        encoded = buffer.getvalue()[:4000]
        for _ in range(1500):
            corrupt = bytearray(encoded)
            for at in rng.integers(0, len(corrupt), size=int(rng.integers(1, 7))):
                corrupt[at] = int(rng.integers(0, 256))
            data = bytes(corrupt[:int(rng.integers(0, len(corrupt) + 1))])
            try:
                values = read_header(data, implicit_vr=implicit)
                assert isinstance(values, dict)
            except RawHeaderError:
                pass
            elements = _command_elements(data)
            assert elements is None or sum(len(v) + 8 for v in elements.values()) == len(data)
            items = _pdv_items(data)
            assert items is None or sum(len(v) + 5 for _, v in items) == len(data)
