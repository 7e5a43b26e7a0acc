"""The node as a real process, with DCMTK's clients and pynetdicom as peers."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification  # type: ignore[attr-defined]

from node.dicom import fastpath
from tests import factories, peers
from tests.nodeproc import NodeProcess, running_node, wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not peers.have_dcmtk(), reason="DCMTK is not installed"),
]

PATIENT_NAME, PATIENT_ID = "SECRET^PERSON", "MRN-7734-XY"


def rows(node: NodeProcess, sql: str) -> list[tuple[object, ...]]:
    return node.query(sql)


def stored_files(node: NodeProcess) -> list[Path]:
    return sorted((node.data_dir / "data").rglob("*.dcm"))


@pytest.fixture(params=fastpath.PATHS)
def node(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[NodeProcess]:
    """The node on each receive path (node.dicom.fastpath and pynetdicom's stock classes)."""
    with running_node(tmp_path, "--receive-path", request.param) as n:
        yield n


def scu(port: int, *contexts: str, calling: str = "PYSCU") -> object:
    ae = AE(ae_title=calling)
    for cx in contexts:
        ae.add_requested_context(cx)
    assoc = ae.associate("127.0.0.1", port, ae_title="ICHTRIAGE")
    assert assoc.is_established
    return assoc


@pytest.mark.parametrize("path", fastpath.PATHS)
def test_storescu_series_is_stored_indexed_and_queued(db_url: str, tmp_path: Path,
                                                      path: str) -> None:
    with running_node(tmp_path, "--receive-path", path, db_url=db_url) as node:
        _store_index_queue(node, tmp_path)


def _store_index_queue(node: NodeProcess, tmp_path: Path) -> None:
    series = factories.ct_series(10, patient_name=PATIENT_NAME, patient_id=PATIENT_ID)
    factories.write_series(tmp_path / "in", series)
    echo = peers.run_echoscu(node.port, aet="CT1", called_aet="ICHTRIAGE")
    assert echo.returncode == 0, echo.stderr
    sent = peers.run_storescu(tmp_path / "in", node.port, aet="CT1", called_aet="ICHTRIAGE")
    assert sent.returncode == 0, sent.stderr
    files = stored_files(node)
    assert len(files) == 10
    study, series_uid = series[0].StudyInstanceUID, series[0].SeriesInstanceUID
    assert {f.parent.parent.name for f in files} == {study}
    assert {f.parent.name for f in files} == {series_uid}
    assert {f.stem for f in files} == {ds.SOPInstanceUID for ds in series}
    back = dcmread(files[0])
    assert back.file_meta.SourceApplicationEntityTitle == "CT1"
    assert back.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"  # storescu's default
    assert back.PixelData == series[int(back.InstanceNumber) - 1].PixelData
    assert rows(node, "select count(*), min(calling_ae) from instance") == [(10, "CT1")]
    assert rows(node, "select patient_name, patient_id from patient") == [(PATIENT_NAME, PATIENT_ID)]
    wait_for(lambda: rows(node, "select status from job") == [("queued",)])
    assert rows(node, "select status, instance_count from series") == [("queued", 10)]
    assert rows(node, "select state, stored from association where calling_ae='CT1'"
                      " order by id") == [("released", 0), ("released", 10)]
    assert node.stop() == 0
    log = node.log_text()
    assert "stopped" in log
    assert PATIENT_NAME not in log and PATIENT_ID not in log
    assert "SECRET" not in log


COMPRESSORS = {
    # name: (command making the compressed copy, storescu flag, transfer syntax UID)
    "jpeg-lossless": (["dcmcjpeg", "+e1"], "-xs", "1.2.840.10008.1.2.4.70"),
    "jpeg-ls": (["dcmcjpls", "+el"], "-xt", "1.2.840.10008.1.2.4.80"),
    "rle": (["dcmcrle"], "-xr", "1.2.840.10008.1.2.5"),
}


@pytest.mark.parametrize("name", sorted(COMPRESSORS) + ["jpeg2000", "deflate"])
def test_compressed_transfer_syntaxes_are_stored_as_received(
        name: str, node: NodeProcess, tmp_path: Path) -> None:
    series = factories.ct_series(3)
    plain = factories.write_series(tmp_path / "plain", series)
    out = tmp_path / "compressed"
    out.mkdir()
    if name == "jpeg2000":
        from pydicom.uid import JPEG2000Lossless
        flag, tsyntax = "-xv", str(JPEG2000Lossless)
        for path in plain:
            ds = dcmread(path)
            ds.compress(JPEG2000Lossless)
            ds.save_as(out / path.name, enforce_file_format=True)
    elif name == "deflate":
        flag, tsyntax = "-xd", "1.2.840.10008.1.2.1.99"
        for path in plain:
            ds = dcmread(path)
            ds.file_meta.TransferSyntaxUID = tsyntax
            ds.save_as(out / path.name, enforce_file_format=True)
    else:
        command, flag, tsyntax = COMPRESSORS[name]
        for path in plain:
            subprocess.run([*command, str(path), str(out / path.name)], check=True)
    sent = peers.run_storescu(sorted(out.iterdir()), node.port, aet="CT1",
                              called_aet="ICHTRIAGE", extra_args=["-R", flag])
    assert sent.returncode == 0, sent.stderr
    assert rows(node, "select distinct transfer_syntax_uid from instance") == [(tsyntax,)]
    for path in stored_files(node):
        original = dcmread(out / f"{int(dcmread(path).InstanceNumber):04d}.dcm")
        received = dcmread(path)
        assert received.file_meta.TransferSyntaxUID == tsyntax
        assert received.PixelData == original.PixelData  # not decoded, not re-encoded


def test_unknown_called_ae_title_is_rejected(node: NodeProcess) -> None:
    echo = peers.run_echoscu(node.port, aet="CT1", called_aet="SOMEONE")
    assert echo.returncode != 0
    assert "Called AE Title Not Recognized" in echo.stderr + echo.stdout
    assert "called AE title 'SOMEONE'" in node.log_text()


def test_calling_ae_allow_list_with_hosts(tmp_path: Path) -> None:
    with running_node(tmp_path, "--allow-ae", "CT1", "--allow-ae", "CT2@10.99.99.99") as node:
        assert peers.run_echoscu(node.port, aet="CT1", called_aet="ICHTRIAGE").returncode == 0
        for caller in ("INTRUDER", "CT2"):  # CT2 is allowed only from another host
            echo = peers.run_echoscu(node.port, aet=caller, called_aet="ICHTRIAGE")
            assert echo.returncode != 0
            assert "Calling AE Title Not Recognized" in echo.stderr + echo.stdout
        assert rows(node, "select calling_ae from association") == [("CT1",)]


def _raw_file(tmp_path: Path, ds: Dataset, name: str) -> Path:
    """Write `ds` with its file meta exactly as set, even where it contradicts the data set."""
    path = tmp_path / name
    ds.preamble = b"\0" * 128
    ds.save_as(path, enforce_file_format=False)
    return path


@pytest.fixture
def chunked_send() -> Iterator[None]:
    """pynetdicom sends files byte for byte, so a test can send what a broken scanner would."""
    before = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    yield
    _config.STORE_SEND_CHUNKED_DATASET = before


def test_bad_data_sets_get_named_statuses_and_nothing_is_stored(
        node: NodeProcess, tmp_path: Path, chunked_send: None) -> None:
    good = factories.ct_series(1)[0]
    bad_uid = factories.ct_series(1)[0]
    with pytest.warns(UserWarning, match="Invalid value for VR UI"):
        bad_uid.StudyInstanceUID = "1.2.abc.4"
    no_series = factories.ct_series(1)[0]
    del no_series.SeriesInstanceUID
    wrong_class = factories.ct_series(1)[0]
    wrong_class.SOPClassUID = MRImageStorage  # context and meta say CT
    wrong_instance = factories.ct_series(1)[0]
    wrong_instance.SOPInstanceUID = generate_uid()  # meta says another instance
    garbage = _raw_file(tmp_path, factories.ct_series(1)[0], "garbage.dcm")
    raw = garbage.read_bytes()
    cut = raw.index(b"\x08\x00\x16\x00")  # the data set starts at (0008,0016)
    garbage.write_bytes(raw[:cut] + b"\x08\x00\x16\x00UI\x40\x00" + b"1.2" + b"\xff" * 5)

    cases = {
        "bad-uid": (_raw_file(tmp_path, bad_uid, "a.dcm"), 0xC000),  # type: ignore[dict-item]
        "no-series": (_raw_file(tmp_path, no_series, "b.dcm"), 0xC000),
        "wrong-class": (_raw_file(tmp_path, wrong_class, "c.dcm"), 0xA900),
        "wrong-instance": (_raw_file(tmp_path, wrong_instance, "d.dcm"), 0xA900),
        "garbage": (garbage, 0xC000),
        "good": (_raw_file(tmp_path, good, "e.dcm"), 0x0000),
    }
    assoc = scu(node.port, CTImageStorage)
    try:
        got = {name: assoc.send_c_store(path).Status for name, (path, _) in cases.items()}
    finally:
        assoc.release()
    assert got == {name: expected for name, (_, expected) in cases.items()}
    assert [f.stem for f in stored_files(node)] == [good.SOPInstanceUID]
    assert rows(node, "select sop_uid from instance") == [(good.SOPInstanceUID,)]
    assert not list((node.data_dir / "data").rglob("*.tmp"))
    wait_for(lambda: rows(node, "select failed, stored from association") == [(5, 1)])


def test_full_disk_answers_out_of_resources_and_keeps_serving(tmp_path: Path) -> None:
    with running_node(tmp_path, env={"ICHTRIAGE_MIN_FREE_MB": str(2**40)}) as node:
        factories.write_series(tmp_path / "in", factories.ct_series(2))
        sent = peers.run_storescu(tmp_path / "in", node.port, aet="CT1", called_aet="ICHTRIAGE")
        assert sent.returncode != 0
        assert stored_files(node) == []
        assert rows(node, "select count(*) from instance") == [(0,)]
        assert peers.run_echoscu(node.port, aet="CT1", called_aet="ICHTRIAGE").returncode == 0
        assert "refused (0xA700 out of resources)" in node.log_text()


def test_database_error_answers_out_of_resources_and_loses_nothing(
        node: NodeProcess, tmp_path: Path) -> None:
    first, second = factories.ct_series(2)
    with sqlite3.connect(node.data_dir / "ichtriage.db") as conn:
        conn.execute("ALTER TABLE instance RENAME TO instance_away")
    assoc = scu(node.port, CTImageStorage)
    assert assoc.send_c_store(first).Status == 0xA700
    assoc.release()
    assert stored_files(node) == []
    with sqlite3.connect(node.data_dir / "ichtriage.db") as conn:
        conn.execute("ALTER TABLE instance_away RENAME TO instance")
    assoc = scu(node.port, CTImageStorage)
    assert assoc.send_c_store(first).Status == 0x0000
    assert assoc.send_c_store(second).Status == 0x0000
    assoc.release()
    assert len(stored_files(node)) == 2
    assert rows(node, "select count(*) from instance") == [(2,)]


def test_concurrent_associations(node: NodeProcess) -> None:
    batches = [factories.ct_series(8) for _ in range(4)]
    statuses: list[int] = []
    lock = threading.Lock()

    def send(batch: list[Dataset]) -> None:
        assoc = scu(node.port, CTImageStorage, calling="CT1")
        for ds in batch:
            status = assoc.send_c_store(ds).Status
            with lock:
                statuses.append(status)
        assoc.release()

    threads = [threading.Thread(target=send, args=(b,)) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [0] * 32
    assert len(stored_files(node)) == 32
    wait_for(lambda: rows(node, "select count(*) from job where status='queued'") == [(4,)])


def test_open_associations_are_spread_over_the_receiving_processes(node: NodeProcess) -> None:
    """Each new association goes to the process with the fewest open ones: four held open
    at once land two and two (the count must last as long as the association does)."""
    opened = []
    for _ in range(4):
        assoc = scu(node.port, Verification)
        assert assoc.send_c_echo().Status == 0  # type: ignore[attr-defined]
        opened.append(assoc)
    for assoc in opened:
        assoc.release()  # type: ignore[attr-defined]
    wait_for(lambda: node.log_text().count(" released: ") == 4)
    accepted = [line for line in node.log_text().splitlines() if " accepted" in line]
    assert len(accepted) == 4
    per_process = {name: sum(name in line for line in accepted)
                   for name in ("ichtriage-receiver-0", "ichtriage-receiver-1")}
    assert per_process == {"ichtriage-receiver-0": 2, "ichtriage-receiver-1": 2}


def test_a_crashed_receiver_is_replaced(node: NodeProcess) -> None:
    listed = subprocess.run(["pgrep", "-P", str(node.proc.pid), "-f", "spawn_main"],
                            capture_output=True, text=True, check=True).stdout.split()
    assert len(listed) == 2  # the two receiving processes
    os.kill(int(listed[0]), signal.SIGKILL)
    wait_for(lambda: "starting a new one" in node.log_text())
    for _ in range(4):  # every receiver answers, old and new
        assert peers.run_echoscu(node.port, aet="CT1", called_aet="ICHTRIAGE").returncode == 0


def test_tls(tmp_path: Path) -> None:
    import ssl

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    with running_node(tmp_path, "--tls-cert", str(cert), "--tls-key", str(key)) as node:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
        ae = AE(ae_title="CT1")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="ICHTRIAGE",
                             tls_args=(ctx, "localhost"))
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0
        assoc.release()
        plain = peers.run_echoscu(node.port, aet="CT1", called_aet="ICHTRIAGE")
        assert plain.returncode != 0
        assert "over TLS" in node.log_text()


def test_port_in_use_is_a_clear_error(node: NodeProcess, tmp_path: Path) -> None:
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "node", "serve", "--data-dir", str(tmp_path / "other"),
         "--port", str(node.port), "--receivers", "1"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{node.port}" in result.stderr


def _associate(port: int, source: str) -> Any:
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(Verification)
    return ae.associate("127.0.0.1", port, ae_title="ICHTRIAGE", bind_address=(source, 0))


@pytest.mark.parametrize("path", fastpath.PATHS)
def test_associations_over_the_limits_are_rejected_for_now(tmp_path: Path, path: str) -> None:
    """Past max_associations_per_host (2) or max_associations (3): a transient
    A-ASSOCIATE-RJ, local limit exceeded (PS3.8 9.3.4), a log line naming the host; a slot
    freed is a slot taken again."""
    with running_node(tmp_path, "--receive-path", path, "--max-associations", "3",
                      "--max-associations-per-host", "2") as node:
        held = [_associate(node.port, "127.0.0.1"), _associate(node.port, "127.0.0.1")]
        try:
            assert all(a.is_established for a in held)
            third = _associate(node.port, "127.0.0.1")
            assert third.is_rejected
            rj = third.acceptor.primitive
            assert (rj.result, rj.result_source, rj.diagnostic) == (0x02, 0x03, 0x02)
            # another host takes the node's third slot once the rejected one is closed
            held.append(_established(node.port, "127.0.0.2"))
            fourth = _associate(node.port, "127.0.0.3")
            assert fourth.is_rejected  # the node's limit
            log = node.log_text()
            assert "from PYSCU (127.0.0.1) rejected: 2 associations open from this host" in log
            assert "from PYSCU (127.0.0.3) rejected: 3 associations open, the node's " in log
            held.pop(0).release()
            held.append(_established(node.port, "127.0.0.1"))  # a freed slot is taken again
        finally:
            for assoc in held:
                assoc.release()


def _established(port: int, source: str) -> Any:
    """An association from `source`, retried while a slot is still held by a closing one."""
    found: list[Any] = []

    def attempt() -> bool:
        assoc = _associate(port, source)
        if assoc.is_established:
            found.append(assoc)
        return bool(found)

    wait_for(attempt, timeout=10, what=f"an association from {source}")
    return found[0]


@pytest.mark.parametrize("path", fastpath.PATHS)
def test_a_peer_that_never_finishes_its_request_is_dropped(tmp_path: Path, path: str) -> None:
    """A connection that sends half an association request, and one that sends nothing:
    both closed after association_request_timeout, with the host in the log; meanwhile DCMTK
    echoes work."""
    with running_node(tmp_path, "--receive-path", path,
                      "--association-request-timeout", "1") as node:
        silent = socket.create_connection(("127.0.0.1", node.port), timeout=10)
        half = socket.create_connection(("127.0.0.1", node.port), timeout=10)
        half.sendall(b"\x01\x00\x00\x00\x01\x00" + b"\x00" * 40)  # 46 of 262 bytes
        assert peers.run_echoscu(node.port, aet="CT1", called_aet="ICHTRIAGE").returncode == 0
        for sock in (silent, half):
            assert sock.recv(64) == b""  # closed by the node
            sock.close()
        wait_for(lambda: "connection from 127.0.0.1 closed: no association request in 1.0 s"
                 in node.log_text(), timeout=10, what="the silent peer's log line")
        wait_for(lambda: "association from 127.0.0.1 aborted: an association request not "
                 "received in time" in node.log_text(), timeout=10, what="the slow peer's")


def test_a_series_sent_over_an_aborted_association_waits_for_the_resend(tmp_path: Path) -> None:
    """storescu aborts after the first half: settled or not, the series is not queued; the
    whole series sent again (released) completes it, and it is queued once."""
    series = factories.ct_series(12)
    factories.write_series(tmp_path / "first", series[:6])
    factories.write_series(tmp_path / "all", series)
    with running_node(tmp_path, settle=0.3) as node:
        cut = peers.run_storescu(tmp_path / "first", node.port, aet="CT1",
                                 called_aet="ICHTRIAGE", extra_args=["--abort"])
        assert cut.returncode == 0, cut.stderr
        wait_for(lambda: rows(node, "select state from association") == [("aborted",)],
                 timeout=10, what="the aborted association recorded")
        time.sleep(1.5)  # five settle times: a plain series would be queued by now
        assert rows(node, "select status, instance_count from series") == [("receiving", 6)]
        again = peers.run_storescu(tmp_path / "all", node.port, aet="CT1",
                                   called_aet="ICHTRIAGE")
        assert again.returncode == 0, again.stderr
        wait_for(lambda: rows(node, "select status from job") == [("queued",)], timeout=10)
        assert rows(node, "select status, instance_count from series") == [("queued", 12)]
