"""What the Q/R SCP tests share: the node under test, a C-MOVE destination that records what
it receives, and the SCU calls."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, evt
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy import Engine, select

from node.dicom.ae import (
    STUDY_ROOT_FIND,
    STUDY_ROOT_GET,
    STUDY_ROOT_MOVE,
)
from node.dicom.fastpath.service_class import Run
from storage.files import FileStore
from storage.models import Instance
from tests.factories import ct_series
from tests.peers import LOOPBACK

NODE = "ICHTRIAGE"


class Node:
    def __init__(self, server: ThreadedAssociationServer, engine: Engine,
                 files: FileStore | None = None, path: str = "fast") -> None:
        self.server = server
        self.engine = engine
        self.files = files
        self.path = path
        self.port = int(server.server_address[1])

    def stored_file(self, sop_uid: str) -> Path:
        assert self.files is not None
        with self.engine.connect() as conn:
            relative = conn.execute(select(Instance.file_path)
                                    .where(Instance.sop_uid == sop_uid)).scalar_one()
        return self.files.path_of(relative)


SINK_RECEIVED: list[tuple[Dataset, str]] = []  # data set, transfer syntax it came in


SINK_BYTES: list[bytes] = []  # the data sets as they came


def _sink(syntaxes: tuple[str, ...] = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
          ) -> ThreadedAssociationServer:
    """A pynetdicom storage SCP: the C-MOVE destination, taking either little endian."""
    ae = AE("SINK")
    ae.add_supported_context(CTImageStorage, list(syntaxes))

    def on_store(event: evt.Event) -> int:
        SINK_BYTES.append(event.request.DataSet.getvalue())
        SINK_RECEIVED.append((event.dataset, str(event.context.transfer_syntax)))
        return 0x0000
    server = ae.make_server((LOOPBACK, 0), evt_handlers=[(evt.EVT_C_STORE, on_store)])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _scu(aet: str = "SCU") -> AE:
    ae = AE(aet)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    for uid in (STUDY_ROOT_FIND, STUDY_ROOT_MOVE, STUDY_ROOT_GET):
        ae.add_requested_context(uid)
    return ae


def _store(node: Node, n: int, *, syntax: str = ExplicitVRLittleEndian,
           **kwargs: Any) -> list[Dataset]:
    """Store a series of n CT instances over one association offering `syntax` alone."""
    series = ct_series(n, **kwargs)
    ae = AE("SCU")
    ae.add_requested_context(CTImageStorage, syntax)
    assoc = ae.associate(LOOPBACK, node.port, ae_title=NODE)
    assert assoc.is_established
    try:
        for ds in series:
            assert assoc.send_c_store(ds).Status == 0x0000
    finally:
        assoc.release()
    return series


def _find(node: Node, identifier: Dataset, aet: str = "SCU") -> list[tuple[int, Dataset | None]]:
    assoc = _scu(aet).associate(LOOPBACK, node.port, ae_title=NODE)
    assert assoc.is_established
    try:
        return [(int(s.Status), ds) for s, ds in assoc.send_c_find(identifier, STUDY_ROOT_FIND)]
    finally:
        assoc.release()


def _study_identifier(**keys: Any) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def _move(node: Node, destination: str, **keys: str) -> list[tuple[Dataset, Dataset | None]]:
    """(status, identifier) of each response to a SERIES level C-MOVE of `keys`."""
    assoc = _scu().associate(LOOPBACK, node.port, ae_title=NODE)
    try:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "SERIES"
        for keyword, value in keys.items():
            setattr(identifier, keyword, value)
        return list(assoc.send_c_move(identifier, destination, STUDY_ROOT_MOVE))
    finally:
        assoc.release()


def _counted_runs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the runs of pending responses the fast path flushes, as they go."""
    runs: list[int] = []
    flush = Run.flush
    monkeypatch.setattr(Run, "flush", lambda self: runs.append(len(self._pieces)) or flush(self))
    return runs


def _store_and_find_all(node: Node) -> list[Dataset]:
    """Store a 2-instance series, find every study: the one pending answer is that study."""
    series = _store(node, 2)
    responses = _find(node, _study_identifier(PatientID=""))
    assert [s for s, _ in responses] == [0xFF00, 0x0000]
    assert responses[0][1] is not None
    assert responses[0][1].StudyInstanceUID == series[0].StudyInstanceUID
    return series

