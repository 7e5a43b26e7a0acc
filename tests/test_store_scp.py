"""The store handler says whose fault a failure is: the sender's data (0xC000), the node's
resources (0xA700), or a fault inside the node (0x0110, logged with its traceback)."""

from __future__ import annotations

import logging
import socket
import subprocess
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)
from pynetdicom import AE, _config
from sqlalchemy import create_engine, text

from node.config import Settings
from node.dicom import store_scp
from node.dicom.receiver import make_receiving_server
from node.dicom.store_scp import StoreHandlers
from storage.associations import AssociationLog
from storage.db import make_engine, upgrade
from storage.files import FileStore
from storage.instances import InstanceStore
from tests import peers
from tests.factories import ct_slice
from tests.peers import LOOPBACK


class FaultyStore(InstanceStore):
    """An instance store with a bug: a fault of the node's, not the sender's."""

    def store(self, *args: Any, **kwargs: Any) -> Any:
        raise KeyError("a bug in the node")


@pytest.fixture
def node_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    monkeypatch.setattr(_config, "LOG_HANDLER_LEVEL", "none")
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    engine = make_engine(url)
    yield {"engine": engine, "files": FileStore(tmp_path / "data"), "url": url}
    engine.dispose()


def serve(handlers: StoreHandlers) -> tuple[Any, Any]:
    """A receiving process's server, handed connections accepted here (as the supervisor
    does); returns it and its listening socket."""
    server = make_receiving_server(Settings(ae_title="NODE", bind=LOOPBACK), handlers)
    listener = socket.create_server((LOOPBACK, 0))

    def accept() -> None:
        while True:
            try:
                conn, addr = listener.accept()
            except OSError:
                return  # closed: the test is over
            server.process_request(conn, addr)

    threading.Thread(target=accept, daemon=True).start()
    return server, listener


def send_one(port: int) -> int:
    ae = AE("CT1")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate(LOOPBACK, port, ae_title="NODE")
    assert assoc.is_established
    status = int(assoc.send_c_store(ct_slice(study_uid="1.2.3", series_uid="1.2.3.4",
                                             index=1)).Status)
    assoc.release()
    return status


def stop(server: Any, listener: Any) -> None:
    listener.close()
    server.server_close()


def test_a_fault_inside_the_node_is_a_processing_failure_with_its_traceback(
        node_parts: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    store = FaultyStore(node_parts["engine"], node_parts["files"])
    server, listener = serve(StoreHandlers(store, AssociationLog(node_parts["engine"]),
                                           ae_title="NODE"))
    try:
        with caplog.at_level(logging.ERROR, logger="node.dicom.store_scp"):
            assert send_one(listener.getsockname()[1]) == 0x0110
    finally:
        stop(server, listener)
    (record,) = [r for r in caplog.records if "failed inside the node" in r.message]
    assert record.exc_info is not None and record.exc_info[0] is KeyError


def test_a_bug_of_the_raw_header_reader_falls_back_to_pydicom(
        node_parts: dict[str, Any], caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise IndexError("a bug in the raw reader")

    monkeypatch.setattr(store_scp, "read_header", broken)
    store = InstanceStore(node_parts["engine"], node_parts["files"])
    server, listener = serve(StoreHandlers(store, AssociationLog(node_parts["engine"]),
                                           ae_title="NODE"))
    try:
        with caplog.at_level(logging.ERROR, logger="node.dicom.store_scp"):
            assert send_one(listener.getsockname()[1]) == 0x0000  # stored all the same
    finally:
        stop(server, listener)
    assert any("raw header reader failed" in r.message and r.exc_info for r in caplog.records)
    engine = create_engine(node_parts["url"])
    with engine.connect() as conn:
        assert conn.execute(text("select count(*) from instance")).scalar() == 1
    engine.dispose()


def test_an_unused_refusal_is_forgotten_when_its_connection_ends(
        node_parts: dict[str, Any]) -> None:
    """A connection over a limit that never sends its request: its refusal must not meet the
    next connection that comes from the same host and port."""
    store = InstanceStore(node_parts["engine"], node_parts["files"])
    handlers = StoreHandlers(store, AssociationLog(node_parts["engine"]), ae_title="NODE")
    handlers.refuse("10.0.0.7", 40000, "2 associations open from this host")
    handlers.forget("10.0.0.7", 40000)
    server, listener = serve(handlers)
    try:
        assert send_one(listener.getsockname()[1]) == 0x0000
    finally:
        stop(server, listener)
    assert handlers._refusals == {}


def _mislabelled_file(folder: Path, *, meta_syntax: str, body_implicit: bool) -> Path:
    """A Part 10 file whose meta header names `meta_syntax` while its body is encoded in
    implicit (or explicit) VR little endian: what a broken archive sends as it is."""
    ds = ct_slice(study_uid="1.2.3", series_uid="1.2.3.4", index=1)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, body_implicit
    write_dataset(body, ds)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = meta_syntax
    out = DicomBytesIO()
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)
    path = folder / "mislabelled.dcm"
    path.write_bytes(bytes(out.getvalue()) + body.getvalue())
    return path


def _send_file(port: int, path: Path, syntax: str) -> int:
    """Send the file's data set bytes as they are (pynetdicom's chunked sending, switched on
    by the tests' callers), on a `syntax` presentation context."""
    ae = AE("CT1")
    ae.add_requested_context(CTImageStorage, syntax)
    assoc = ae.associate(LOOPBACK, port, ae_title="NODE")
    assert assoc.is_established
    try:
        with warnings.catch_warnings():  # the sender's pydicom reads the header and says so
            warnings.filterwarnings("ignore", "Expected (im|ex)plicit VR", UserWarning)
            return int(assoc.send_c_store(path).Status)
    finally:
        assoc.release()


@pytest.mark.parametrize(("meta_syntax", "body_implicit", "stored_as"), [
    (ImplicitVRLittleEndian, False, ExplicitVRLittleEndian),
    (ExplicitVRLittleEndian, True, ImplicitVRLittleEndian),
])
def test_a_body_that_is_not_in_the_contexts_encoding_is_stored_under_its_own(
        node_parts: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch, meta_syntax: str, body_implicit: bool,
        stored_as: str) -> None:
    """Issue 12 row 6: the file stored is readable (by pydicom without a warning, and by
    DCMTK's dcmdump) and the index names the encoding it really has."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    path = _mislabelled_file(tmp_path, meta_syntax=meta_syntax, body_implicit=body_implicit)
    store = InstanceStore(node_parts["engine"], node_parts["files"])
    server, listener = serve(StoreHandlers(store, AssociationLog(node_parts["engine"]),
                                           ae_title="NODE"))
    try:
        with caplog.at_level(logging.WARNING, logger="node.dicom.store_scp"):
            assert _send_file(listener.getsockname()[1], path, meta_syntax) == 0x0000
    finally:
        stop(server, listener)
    assert [r.levelname for r in caplog.records
            if "not in the presentation context's" in r.getMessage()] == ["WARNING"]
    engine = create_engine(node_parts["url"])
    with engine.connect() as conn:
        (file_path, syntax), = conn.execute(
            text("select file_path, transfer_syntax_uid from instance")).all()
    engine.dispose()
    assert syntax == stored_as
    stored = tmp_path / "data" / file_path
    read = dcmread(stored)  # warnings are errors here: a mismatch would fail the test
    assert read.file_meta.TransferSyntaxUID == stored_as
    assert read.StudyInstanceUID == "1.2.3" and read.PixelData
    if not peers.have_dcmtk():
        peers.missing_peer("DCMTK")
    dumped = subprocess.run([peers.dcmtk_tool("dcmdump"), "-q", str(stored)],
                            capture_output=True, text=True)
    assert dumped.returncode == 0 and "(0020,000d)" in dumped.stdout, dumped.stderr


def test_an_implicit_body_on_a_compressed_context_is_refused(
        node_parts: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Encapsulated transfer syntaxes are explicit VR (PS3.5 A.4): an implicit body there
    cannot be stored readably, so it is refused and nothing is kept."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    path = _mislabelled_file(tmp_path, meta_syntax=RLELossless, body_implicit=True)
    store = InstanceStore(node_parts["engine"], node_parts["files"])
    server, listener = serve(StoreHandlers(store, AssociationLog(node_parts["engine"]),
                                           ae_title="NODE"))
    try:
        assert _send_file(listener.getsockname()[1], path, RLELossless) == 0xC000
    finally:
        stop(server, listener)
    engine = create_engine(node_parts["url"])
    with engine.connect() as conn:
        assert conn.execute(text("select count(*) from instance")).scalar() == 0
    engine.dispose()
    assert not list((tmp_path / "data").rglob("*.dcm"))


def test_text_of_a_data_set_without_a_character_set_is_indexed_in_the_default(
        node_parts: dict[str, Any]) -> None:
    """Issue 12 row 5: GB2312 bytes with no Specific Character Set; a site that sets
    default_character_set (as Orthanc's DefaultEncoding) sees the name, not mojibake. The
    stored file keeps its bytes."""
    name = "王^小明"
    ds = ct_slice(study_uid="1.2.3", series_uid="1.2.3.4", index=1)
    ds.PatientName = name.encode("gb2312")  # raw bytes: nothing declares their encoding
    assert "SpecificCharacterSet" not in ds
    store = InstanceStore(node_parts["engine"], node_parts["files"])
    server, listener = serve(StoreHandlers(store, AssociationLog(node_parts["engine"]),
                                           ae_title="NODE", default_character_set="GB18030"))
    try:
        ae = AE("CT1")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate(LOOPBACK, listener.getsockname()[1], ae_title="NODE")
        assert assoc.is_established
        assert assoc.send_c_store(ds).Status == 0x0000
        assoc.release()
    finally:
        stop(server, listener)
    engine = create_engine(node_parts["url"])
    with engine.connect() as conn:
        (indexed,) = conn.execute(text("select patient_name from patient")).scalars().all()
        (file_path,) = conn.execute(text("select file_path from instance")).scalars().all()
    engine.dispose()
    assert indexed == name
    stored = dcmread(node_parts["files"].root / file_path, stop_before_pixels=True)
    assert "SpecificCharacterSet" not in stored
    assert stored.get_item("PatientName").value.rstrip(b" ") == name.encode("gb2312")
