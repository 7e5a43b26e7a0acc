"""The node's C-MOVE loop (`node.dicom.fastpath.move`) against pynetdicom's own: one index,
two nodes (the fast path's loop and pynetdicom's stock `_move_scp`), the same move asked of
each, and every response (status and the four counts), the Failed SOP Instance UID List
and the bytes each destination received compared (PS3.4 C.4.2.1.5, C.4.2.3.1)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.service_class import QueryRetrieveServiceClass
from pynetdicom.transport import ThreadedAssociationServer

from node.config import AllowedPeer, Destination, Settings
from node.dicom import fastpath
from node.dicom.ae import STUDY_ROOT_MOVE, build_ae
from node.dicom.qr_scp import QueryHandlers
from node.dicom.store_scp import StoreHandlers
from storage.associations import AssociationLog
from storage.db import make_engine, upgrade
from storage.files import FileStore
from storage.instances import InstanceStore
from tests.peers import LOOPBACK
from tests.qr.support import NODE, Node, _scu, _store
from tests.scp import LimitedServer, stop_server

REFUSED: set[str] = set()  # SOP Instance UIDs the REFUSING destination answers 0xA700
COUNTS = ("NumberOfRemainingSuboperations", "NumberOfCompletedSuboperations",
          "NumberOfFailedSuboperations", "NumberOfWarningSuboperations")


class Destination_:
    """A pynetdicom storage SCP recording the data sets' bytes by SOP Instance UID; it
    refuses those in REFUSED, and holds its first store until `gate` is set, if gated."""

    def __init__(self, aet: str, *, gated: bool = False) -> None:
        self.received: dict[str, bytes] = {}
        self.reached = threading.Event()
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        ae = AE(aet)
        ae.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self.server = ae.make_server((LOOPBACK, 0), evt_handlers=[(evt.EVT_C_STORE, self.on_store)])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def on_store(self, event: evt.Event) -> int:
        self.reached.set()
        assert self.gate.wait(20)
        uid = str(event.request.AffectedSOPInstanceUID)
        if uid in REFUSED:
            return 0xA700
        self.received[uid] = event.request.DataSet.getvalue()
        return 0x0000

    def address(self, aet: str) -> Destination:
        return Destination(aet, LOOPBACK, int(self.server.server_address[1]))


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[tuple[dict[str, Node], dict[str, Destination_]]]:
    """A node on each receive path, over one index and file store, and their destinations."""
    url = f"sqlite:///{tmp_path / 'index.db'}"
    upgrade(url)
    engine = make_engine(url)
    files = FileStore(tmp_path / "data")
    store = StoreHandlers(InstanceStore(engine, files), AssociationLog(engine), ae_title=NODE,
                          may_store=(AllowedPeer("SCU"),))
    sinks = {"SINK": Destination_("SINK"), "REFUSING": Destination_("REFUSING"),
             "GATED": Destination_("GATED", gated=True)}
    queries = QueryHandlers(engine, files, ae_title=NODE, destinations=[
        *(sink.address(aet) for aet, sink in sinks.items()), Destination("DOWN", LOOPBACK, 9)],
        allowed=(AllowedPeer("SCU"),))
    servers: dict[str, Node] = {}
    for path in fastpath.PATHS:
        ae = build_ae(Settings(ae_title=NODE, receive_path=path))
        server = ae.make_server((LOOPBACK, 0), evt_handlers=store.bindings() + queries.bindings(),
                                server_class=LimitedServer,
                                request_handler=fastpath.request_handler(path))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers[path] = Node(server, engine, files, path)
    REFUSED.clear()
    try:
        yield servers, sinks
    finally:
        for node in servers.values():
            stop_server(node.server)
        for sink in sinks.values():
            stop_server(sink.server)
        engine.dispose()


def _outcome(node: Node, sinks: dict[str, Destination_], destination: str,
             series_uid: str) -> tuple[list[tuple[Any, ...]], list[str] | None, dict[str, bytes]]:
    """Every response (status, counts), the final Failed SOP Instance UID List and what the
    destination received, for a SERIES level C-MOVE."""
    for sink in sinks.values():
        sink.received.clear()
    responses = _moved(node, destination, series_uid)
    failed = responses[-1][1]
    listed = None
    if failed is not None and "FailedSOPInstanceUIDList" in failed:
        value = failed.FailedSOPInstanceUIDList
        listed = sorted([value] if isinstance(value, str) else list(value))
    received = dict(sinks[destination].received) if destination in sinks else {}
    return [_response(s) for s, _ in responses], listed, received


def _moved(node: Node, destination: str, series_uid: str) -> list[tuple[Dataset, Any]]:
    assoc = _scu().associate(LOOPBACK, node.port, ae_title=NODE)
    assert assoc.is_established
    try:
        return list(assoc.send_c_move(_series(series_uid), destination, STUDY_ROOT_MOVE))
    finally:
        assoc.release()


def _series(series_uid: str) -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "SERIES"
    identifier.SeriesInstanceUID = series_uid
    return identifier


def _response(status: Dataset) -> tuple[Any, ...]:
    return (int(status.Status), *(status.get(keyword) for keyword in COUNTS))


def _same_on_both(servers: dict[str, Node], sinks: dict[str, Destination_], destination: str,
                  series_uid: str) -> tuple[list[tuple[Any, ...]], list[str] | None,
                                            dict[str, bytes]]:
    fast = _outcome(servers["fast"], sinks, destination, series_uid)
    stock = _outcome(servers["stock"], sinks, destination, series_uid)
    assert fast[0][-1] == stock[0][-1]  # the final response and its counts
    # pynetdicom sends a pending response per sub-operation; the node's loop the first and
    # then some (PENDING_INTERVAL), each with the counts of its moment
    assert fast[0][:1] == stock[0][:1]
    assert set(fast[0][:-1]) <= set(stock[0][:-1])
    assert fast[1] == stock[1]
    assert fast[2].keys() == stock[2].keys()
    for uid, data in fast[2].items():
        assert data == stock[2][uid], uid  # byte for byte
    return fast


def test_a_move_that_succeeds(nodes: Any) -> None:
    servers, sinks = nodes
    series = _store(servers["fast"], 3)
    responses, failed, received = _same_on_both(servers, sinks, "SINK",
                                                series[0].SeriesInstanceUID)
    pending = [(0xFF00, 2, 1, 0, 0), (0xFF00, 1, 2, 0, 0), (0xFF00, 0, 3, 0, 0)]
    assert responses[0] == pending[0]
    assert set(responses[:-1]) <= set(pending)
    assert responses[-1] == (0x0000, 0, 3, 0, 0)
    stock = _outcome(servers["stock"], sinks, "SINK", series[0].SeriesInstanceUID)[0]
    assert stock == [*pending, (0x0000, 0, 3, 0, 0)]  # one per sub-operation
    assert failed is None
    assert sorted(received) == sorted(d.SOPInstanceUID for d in series)
    for uid, data in received.items():  # the stored data set, as stored
        path = servers["fast"].stored_file(uid)
        assert path.read_bytes().endswith(data)


def test_a_move_where_some_sub_operations_fail(nodes: Any) -> None:
    servers, sinks = nodes
    series = _store(servers["fast"], 4)
    REFUSED.update({series[1].SOPInstanceUID, series[3].SOPInstanceUID})
    responses, failed, received = _same_on_both(servers, sinks, "REFUSING",
                                                series[0].SeriesInstanceUID)
    assert responses[-1][:1] == (0xB000,)
    assert responses[-1][2:] == (2, 2, 0)
    assert failed == sorted([series[1].SOPInstanceUID, series[3].SOPInstanceUID])
    assert len(received) == 2


def test_a_move_where_every_sub_operation_fails(nodes: Any) -> None:
    servers, sinks = nodes
    series = _store(servers["fast"], 2)
    REFUSED.update(d.SOPInstanceUID for d in series)
    responses, failed, _received = _same_on_both(servers, sinks, "REFUSING",
                                                 series[0].SeriesInstanceUID)
    assert responses[-1][0] == 0xA702  # unable to perform sub-operations
    assert failed == sorted(d.SOPInstanceUID for d in series)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("destination", ["NOWHERE", "DOWN"])
def test_an_unknown_or_unreachable_destination(nodes: Any, destination: str) -> None:
    servers, sinks = nodes
    series = _store(servers["fast"], 1)
    responses, failed, _received = _same_on_both(servers, sinks, destination,
                                                 series[0].SeriesInstanceUID)
    assert [r[0] for r in responses] == [0xA801]
    assert failed is None


def test_an_unreadable_file_fails_with_its_uid_listed(nodes: Any) -> None:
    servers, sinks = nodes
    series = _store(servers["fast"], 3)
    servers["fast"].stored_file(series[2].SOPInstanceUID).write_bytes(b"not DICOM")
    responses, failed, received = _same_on_both(servers, sinks, "SINK",
                                                series[0].SeriesInstanceUID)
    assert responses[-1] == (0xB000, 0, 2, 1, 0)
    assert failed == [series[2].SOPInstanceUID]
    assert sorted(received) == sorted(d.SOPInstanceUID for d in series[:2])


def test_a_cancel_stops_the_move_with_its_counts(nodes: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """C-CANCEL while the first sub-operation's response is awaited: the move stops after
    it (0xFE00), the rest counted as remaining, on both paths alike."""
    servers, sinks = nodes
    series = _store(servers["fast"], 4)
    seen = threading.Event()  # the handler (or the loop) has taken the cancel
    is_cancelled = QueryRetrieveServiceClass.is_cancelled

    def taking(self: QueryRetrieveServiceClass, msg_id: int) -> bool:
        cancelled = is_cancelled(self, msg_id)
        if cancelled:
            seen.set()
        return cancelled
    monkeypatch.setattr(QueryRetrieveServiceClass, "is_cancelled", taking)
    outcomes = []
    for path in fastpath.PATHS:
        gated = sinks["GATED"]
        gated.received.clear()
        gated.reached.clear()
        gated.gate.clear()
        seen.clear()
        assoc = _scu().associate(LOOPBACK, servers[path].port, ae_title=NODE)
        assert assoc.is_established
        responses: list[tuple[Dataset, Any]] = []
        mover = threading.Thread(target=lambda a=assoc, r=responses: r.extend(
            a.send_c_move(_series(series[0].SeriesInstanceUID), "GATED", STUDY_ROOT_MOVE)))
        mover.start()
        try:
            assert gated.reached.wait(20)  # the first instance is at the destination
            context = next(cx for cx in assoc.accepted_contexts
                           if cx.abstract_syntax == STUDY_ROOT_MOVE)
            assoc.send_c_cancel(1, context.context_id)
            _until_cancel_received(servers[path].server, seen)
        finally:
            gated.gate.set()
            mover.join(30)
            assoc.release()
        outcomes.append(([_response(s) for s, _ in responses], sorted(gated.received)))
    assert outcomes[0] == outcomes[1]
    responses_, received = outcomes[0]
    assert responses_ == [(0xFF00, 3, 1, 0, 0), (0xFE00, 3, 1, 0, 0)]
    assert len(received) == 1


def _until_cancel_received(server: ThreadedAssociationServer, seen: threading.Event
                           ) -> None:
    """Until the node has the C-CANCEL: held by its association, or already taken by the
    handler (fails after 20 s)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if seen.is_set() or any(getattr(a.dimse, "cancel_req", None)
                                for a in server.active_associations):
            return
        time.sleep(0.01)
    raise AssertionError("the node never received the C-CANCEL")
