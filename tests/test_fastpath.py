"""The fast receive path is tied to one pynetdicom version, and falls back to the stock path."""

from __future__ import annotations

import logging
import socket
import struct
import threading

import pynetdicom
import pytest
from pynetdicom.pdu import A_ASSOCIATE_RQ

from node.dicom import fastpath
from node.dicom.fastpath import upstream
from node.dicom.guard import GuardedRequestHandler
from tests.peers import LOOPBACK


def test_copied_upstream_methods_are_unchanged() -> None:
    # Fails on a pynetdicom upgrade that changes any method the fast path copies or relies
    # on: compare the copy with the new upstream code, then renew the digests and
    # UPSTREAM_VERSION together.
    assert pynetdicom.__version__ == fastpath.UPSTREAM_VERSION
    assert upstream.changed() == []


def test_a_changed_upstream_method_is_noticed(monkeypatch: pytest.MonkeyPatch) -> None:
    name = next(iter(upstream.COPIED))
    monkeypatch.setitem(upstream.COPIED, name, "0" * 64)
    assert upstream.changed() == [name]
    monkeypatch.setitem(upstream.COPIED, "pynetdicom.dul:DULServiceProvider.gone", "0" * 64)
    assert "pynetdicom.dul:DULServiceProvider.gone" in upstream.changed()


def test_the_fast_path_on_its_own_version() -> None:
    from node.dicom.fastpath.transport import WakingRequestHandler

    assert fastpath.request_handler("fast") is WakingRequestHandler
    assert issubclass(WakingRequestHandler, GuardedRequestHandler)
    assert fastpath.request_handler("stock") is GuardedRequestHandler


def test_another_version_falls_back_to_the_stock_path_with_one_warning(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(fastpath, "_warned", type(fastpath._warned)())
    caplog.set_level(logging.WARNING, logger="node.dicom.fastpath")
    for _ in range(3):
        assert fastpath.request_handler("fast", version="3.1.0") is GuardedRequestHandler
    warnings = [r for r in caplog.records if "follows pynetdicom 3.0.4, not 3.1.0" in r.message]
    assert len(warnings) == 1


def test_the_application_entity_follows_the_path() -> None:
    from pynetdicom.ae import ApplicationEntity

    from node.dicom.fastpath.ae import RequestingAE

    assert fastpath.application_entity("fast") is RequestingAE
    assert fastpath.application_entity("stock") is ApplicationEntity
    assert fastpath.application_entity("fast", version="3.1.0") is ApplicationEntity
    assert fastpath.sends_stored_files(RequestingAE("X"))
    assert not fastpath.sends_stored_files(ApplicationEntity("X"))
    with pytest.raises(ValueError, match="receive path"):
        fastpath.application_entity("turbo")


def test_requested_associations_send_without_delay() -> None:
    from pynetdicom._globals import MODE_REQUESTOR
    from pynetdicom.transport import AddressInformation

    from node.dicom.fastpath.ae import RequestingAE
    from node.dicom.fastpath.association import WakingAssociation

    ae = RequestingAE("X")
    assoc = WakingAssociation(ae, MODE_REQUESTOR)
    sock = ae._create_socket(assoc, AddressInformation.from_tuple(("", 0)), None)
    try:
        assert sock.socket is not None
        assert sock.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        for unused in (sock.socket, assoc.dul._wake_r, assoc.dul._wake_w):
            if unused is not None:
                unused.close()


def test_an_unknown_path_is_an_error() -> None:
    with pytest.raises(ValueError, match="receive path"):
        fastpath.request_handler("turbo")


def captured_request(calling: str) -> bytes:
    """The A-ASSOCIATE-RQ a pynetdicom SCU calling as `calling` sends, with every storage
    context in three transfer syntaxes (as a scanner proposes)."""
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless
    from pynetdicom import AE, StoragePresentationContexts

    listener = socket.create_server((LOOPBACK, 0))
    port = listener.getsockname()[1]
    captured: list[bytes] = []

    def accept() -> None:
        conn, _ = listener.accept()
        data = b""
        while len(data) < 6 or len(data) < 6 + struct.unpack(">L", data[2:6])[0]:
            data += conn.recv(65536)
        captured.append(data)
        conn.close()

    thread = threading.Thread(target=accept)
    thread.start()
    ae = AE(calling)
    ae.acse_timeout = 2
    for cx in StoragePresentationContexts[:100]:
        ae.add_requested_context(cx.abstract_syntax, [JPEG2000Lossless, ExplicitVRLittleEndian,
                                                      ImplicitVRLittleEndian])
    ae.associate(LOOPBACK, port, ae_title="NODE")
    thread.join()
    listener.close()
    return captured[0]


def test_a_remembered_associate_request_reads_as_a_fresh_one() -> None:
    raw = captured_request("SCANNER1")
    pdu = A_ASSOCIATE_RQ()
    pdu.decode(raw)
    for _ in range(3):  # what each association that sends these bytes does with it
        assert A_ASSOCIATE_RQ(pdu.to_primitive()).encode() == raw
    assert pdu.encode() == raw  # reading it left it as it was


def test_associations_share_a_decoded_request_only_when_the_bytes_are_equal(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from pynetdicom import AE, _config, evt

    from node.dicom.fastpath import dul
    from tests.scp import VERIFICATION, start_server, stop_server

    monkeypatch.setattr(_config, "LOG_HANDLER_LEVEL", "none")
    monkeypatch.setattr(dul, "ASSOCIATE_REQUESTS", dul.AssociateRequests())
    seen: list[str] = []
    srv = start_server("fast", lambda event: 0)
    srv.bind(evt.EVT_REQUESTED, lambda event: seen.append(
        str(event.assoc.requestor.primitive.calling_ae_title).strip()))
    try:
        for calling in ("CT1", "CT1", "CT2", "CT1"):
            ae = AE(calling)
            ae.add_requested_context(VERIFICATION)
            assoc = ae.associate(LOOPBACK, srv.server_address[1], ae_title="NODE")
            assert assoc.is_established
            assert assoc.send_c_echo().Status == 0
            assoc.release()
    finally:
        stop_server(srv)
    assert seen == ["CT1", "CT1", "CT2", "CT1"]
    assert len(dul.ASSOCIATE_REQUESTS._pdus) == 2  # one decoded request per distinct one
