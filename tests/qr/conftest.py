"""The Q/R SCP tests' node, in process on each receive path, and the settings a receiving
process runs with."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import config as pydicom_config
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import _config

from node.config import AllowedPeer, Destination, Settings
from node.dicom import fastpath
from node.dicom.ae import build_ae
from node.dicom.qr_scp import QueryHandlers
from node.dicom.store_scp import StoreHandlers
from storage.associations import AssociationLog
from storage.db import make_engine, upgrade
from storage.files import FileStore
from storage.instances import InstanceStore
from tests.peers import LOOPBACK
from tests.qr.support import (
    NODE,
    Node,
    _sink,
)
from tests.scp import LimitedServer, stop_server


@pytest.fixture(autouse=True)
def _lenient_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """As receiver_main sets it: values a peer got wrong are read as sent (and here, a test
    can send them)."""
    monkeypatch.setattr(pydicom_config.settings, "reading_validation_mode", pydicom_config.IGNORE)
    monkeypatch.setattr(pydicom_config.settings, "writing_validation_mode", pydicom_config.IGNORE)
    # as make_receiving_server sets them: no per-message log handlers (they keep messages
    # off the fast path), no identifiers in the log
    monkeypatch.setattr(_config, "LOG_HANDLER_LEVEL", "none")
    monkeypatch.setattr(_config, "LOG_REQUEST_IDENTIFIERS", False)  # names and IDs
    monkeypatch.setattr(_config, "LOG_RESPONSE_IDENTIFIERS", False)


@pytest.fixture(params=fastpath.PATHS)
def node(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Node]:
    url = f"sqlite:///{tmp_path / 'index.db'}"
    upgrade(url)
    engine = make_engine(url)
    files = FileStore(tmp_path / "data")
    store = StoreHandlers(InstanceStore(engine, files), AssociationLog(engine), ae_title=NODE,
                          may_store=(AllowedPeer("SCU"),))
    sink = _sink()
    explicit = _sink((ExplicitVRLittleEndian,))
    queries = QueryHandlers(engine, files, ae_title=NODE,
                            destinations=[Destination("SINK", LOOPBACK, int(sink.server_address[1])),
                                          Destination("EXPLICIT", LOOPBACK,
                                                      int(explicit.server_address[1])),
                                          Destination("DOWN", LOOPBACK, 9)],
                            allowed=(AllowedPeer("SCU"), AllowedPeer("VIEWER")))
    ae = build_ae(Settings(ae_title=NODE, receive_path=request.param))
    server = ae.make_server((LOOPBACK, 0), evt_handlers=store.bindings() + queries.bindings(),
                            server_class=LimitedServer,
                            request_handler=fastpath.request_handler(request.param))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield Node(server, engine, files, request.param)
    finally:
        stop_server(server)
        stop_server(sink)
        stop_server(explicit)
        engine.dispose()

