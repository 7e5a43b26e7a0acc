"""Both receive paths (node.dicom.fastpath and pynetdicom's stock classes, each reading through
node.dicom.guard) behave as pynetdicom's own acceptor."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pynetdicom import _config, evt
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.fsm import StateMachine
from pynetdicom.transport import ThreadedAssociationServer

from node.dicom import fastpath
from node.dicom.fastpath.dimse import StoreDIMSE
from node.dicom.fastpath.dul import WakingDUL, _pdv_items
from tests.factories import ct_slice
from tests.peers import LOOPBACK
from tests.scp import scu, second_refused, start_server, stop_server, wait_idle

VERIFICATION = "1.2.840.10008.1.1"


@pytest.fixture(autouse=True)
def no_log_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    """As a receiving process runs: pynetdicom's documented switch off."""
    monkeypatch.setattr(_config, "LOG_HANDLER_LEVEL", "none")


@pytest.fixture(params=fastpath.PATHS)
def any_server(request: pytest.FixtureRequest) -> Iterator[tuple[ThreadedAssociationServer,
                                                                 list[Any]]]:
    """A server on each receive path."""
    received: list[Any] = []
    srv = start_server(request.param, second_refused(received))
    yield srv, received
    stop_server(srv)


@pytest.fixture
def server() -> Iterator[tuple[ThreadedAssociationServer, list[Any]]]:
    """A server on the fast path."""
    received: list[Any] = []
    srv = start_server("fast", second_refused(received))
    yield srv, received
    stop_server(srv)


def store_three(port: int) -> tuple[list[int], list[str]]:
    """Echo, then store three slices over one association: their statuses and UIDs."""
    slices = [ct_slice(study_uid="1.2.3", series_uid="1.2.3.4", index=i) for i in range(3)]
    assoc = scu().associate(LOOPBACK, port, ae_title="NODE")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    statuses = [assoc.send_c_store(ds).Status for ds in slices]
    assoc.release()
    return statuses, [ds.SOPInstanceUID for ds in slices]


def test_stores_echoes_and_releases(
        any_server: tuple[ThreadedAssociationServer, list[Any]]) -> None:
    srv, received = any_server
    statuses, sent = store_three(srv.server_address[1])
    assert statuses == [0x0000, 0xA700, 0x0000]  # the handler's answer, either way encoded
    fast = srv.RequestHandlerClass is not fastpath.GuardedRequestHandler
    kind = "WakingAssociation" if fast else "Association"
    assert received == [(kind, uid) for uid in sent]
    wait_idle(srv)


@pytest.fixture
def general_responses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The responses the acceptor sent through pynetdicom's general encoder."""
    sent: list[str] = []
    general = DIMSEServiceProvider.send_msg

    def send_msg(self: DIMSEServiceProvider, primitive: Any, context_id: int) -> None:
        if isinstance(self, StoreDIMSE):
            sent.append(type(primitive).__name__)
        general(self, primitive, context_id)

    monkeypatch.setattr(DIMSEServiceProvider, "send_msg", send_msg)
    return sent


@pytest.mark.parametrize(("level", "general"), [
    (logging.INFO, ["C_ECHO"]),  # pynetdicom's log handlers are not bound
    (logging.DEBUG, ["C_ECHO", "C_STORE", "C_STORE", "C_STORE"]),  # they are, and log
])
def test_store_responses_take_the_direct_path_unless_pynetdicom_debugs(
        general_responses: list[str], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, level: int, general: list[str]) -> None:
    # what receiving processes do: LOG_HANDLER_LEVEL 'standard' only when pynetdicom debugs
    monkeypatch.setattr(_config, "LOG_HANDLER_LEVEL",
                        "standard" if level == logging.DEBUG else "none")
    srv = start_server("fast", second_refused([]))
    caplog.set_level(level, logger="pynetdicom")
    assert store_three(srv.server_address[1])[0] == [0x0000, 0xA700, 0x0000]
    assert general_responses == general
    assert ("C-STORE RSP" in caplog.text) == (level == logging.DEBUG)
    wait_idle(srv)
    stop_server(srv)


def test_store_requests_are_read_directly(
        server: tuple[ThreadedAssociationServer, list[Any]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    srv, received = server
    read_by_pynetdicom: list[str] = []
    general = DIMSEMessage.message_to_primitive

    def message_to_primitive(self: DIMSEMessage) -> Any:
        read_by_pynetdicom.append(type(self).__name__)
        return general(self)

    monkeypatch.setattr(DIMSEMessage, "message_to_primitive", message_to_primitive)
    statuses, sent = store_three(srv.server_address[1])
    assert statuses == [0x0000, 0xA700, 0x0000]
    assert [uid for _, uid in received] == sent
    # the SCU's side reads its three responses through pynetdicom; the acceptor only its echo
    assert sorted(read_by_pynetdicom) == ["C_ECHO_RQ", "C_ECHO_RSP"] + ["C_STORE_RSP"] * 3
    wait_idle(srv)


@pytest.mark.parametrize(("level", "direct"), [(logging.INFO, True), (logging.DEBUG, False)])
def test_data_pdus_skip_the_state_machine_unless_watched(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        level: int, direct: bool) -> None:
    monkeypatch.setattr(_config, "LOG_HANDLER_LEVEL",
                        "standard" if level == logging.DEBUG else "none")
    srv = start_server("fast", second_refused([]))
    caplog.set_level(level, logger="pynetdicom")  # at DEBUG pynetdicom logs every PDU
    events: list[str] = []
    do_action = StateMachine.do_action

    def counted(self: StateMachine, event: str) -> None:
        if isinstance(self.dul, WakingDUL):
            events.append(event)
        do_action(self, event)

    monkeypatch.setattr(StateMachine, "do_action", counted)
    assert store_three(srv.server_address[1])[0] == [0x0000, 0xA700, 0x0000]
    wait_idle(srv)
    # Evt10: P-DATA-TF received (an echo and three stores, each one PDU or more)
    assert ("Evt10" in events) is not direct
    assert "Evt6" in events and "Evt12" in events  # association and release still go there
    stop_server(srv)


def test_pdv_items_must_fill_the_pdu_exactly() -> None:
    two = b"\x00\x00\x00\x03\x01\x03A" + b"\x00\x00\x00\x04\x03\x02BC"
    assert _pdv_items(two) == [[1, b"\x03A"], [3, b"\x02BC"]]
    assert _pdv_items(two[:-1]) is None  # cut short
    assert _pdv_items(two + b"\x00") is None  # trailing byte
    assert _pdv_items(b"\x00\x00\x00\x01\x01") is None  # an item without its header
    assert _pdv_items(b"") is None


def test_peer_abort_and_vanishing_peer_end_the_association(
        any_server: tuple[ThreadedAssociationServer, list[Any]]) -> None:
    srv, _ = any_server
    port = srv.server_address[1]
    assoc = scu().associate(LOOPBACK, port, ae_title="NODE")
    assert assoc.is_established
    assoc.abort()
    wait_idle(srv)
    assoc = scu().associate(LOOPBACK, port, ae_title="NODE")
    assert assoc.is_established
    assoc.dul.socket.socket.close()  # the peer's process dies without a word
    wait_idle(srv)


def test_idle_association_is_ended_by_the_network_timeout(
        any_server: tuple[ThreadedAssociationServer, list[Any]]) -> None:
    srv, _ = any_server
    aborted = threading.Event()
    assoc = scu().associate(LOOPBACK, srv.server_address[1], ae_title="NODE",
                            evt_handlers=[(evt.EVT_ABORTED, lambda event: aborted.set())])
    assert assoc.is_established
    assert isinstance(srv.active_associations[0], Association)
    assert aborted.wait(10)  # network_timeout is 1 s: the node aborts, the peer sees it
    wait_idle(srv)


def test_an_idle_association_leaves_its_threads_asleep(
        server: tuple[ThreadedAssociationServer, list[Any]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    srv, _ = server
    turns = {"upper layer": 0, "association": 0}
    wait, expired = WakingDUL._wait, WakingDUL.idle_timer_expired

    def counted_wait(self: WakingDUL) -> None:
        turns["upper layer"] += 1
        wait(self)

    def counted_expired(self: WakingDUL) -> bool:
        turns["association"] += 1  # once per turn of the association's reactor
        return expired(self)

    monkeypatch.setattr(WakingDUL, "_wait", counted_wait)
    monkeypatch.setattr(WakingDUL, "idle_timer_expired", counted_expired)
    assoc = scu().associate(LOOPBACK, srv.server_address[1], ae_title="NODE")
    assert assoc.is_established
    time.sleep(0.2)
    before = dict(turns)
    time.sleep(0.5)  # network_timeout is 1 s: still open after this
    idle = {loop: turns[loop] - before[loop] for loop in turns}
    assoc.release()
    # Woken by their timers only, at most 100 times a second (pynetdicom's own loops turn
    # every 1 ms: 500 times here).
    assert all(count <= 50 for count in idle.values()), idle
    wait_idle(srv)


