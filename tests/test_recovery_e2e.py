"""A node killed with SIGKILL (the whole process tree) and started again on the same data: its
series is triaged within seconds of the restart, not after the dead worker's lease."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from ml.phantom import write_series
from tests import factories, peers
from tests.nodeproc import NodeProcess, running_node, wait_for

pytestmark = [pytest.mark.slow]


def kill_tree(node: NodeProcess) -> None:
    """SIGKILL the node and every process it started, as a power cut or the OOM killer would."""
    children = subprocess.run(["pgrep", "-P", str(node.proc.pid)], capture_output=True,
                              text=True).stdout.split()
    for pid in [node.proc.pid, *map(int, children)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    node.proc.wait(timeout=10)


def test_a_job_running_at_a_sigkill_is_done_soon_after_the_restart(tmp_path: Path) -> None:
    # The worker loads the model, then reads and classifies 24 full-size slices: seconds in
    # which the job is "running", and the kill comes then. The lease is made long (600 s):
    # only the restart's recovery can hand the job on in time.
    series = write_series(tmp_path / "in", seed=11, slices=24, size=512, subtypes=())
    lease = {"ICHTRIAGE_JOB_LEASE_SECONDS": "600"}
    with running_node(tmp_path, workers=1, settle=0.3, env=lease) as node:
        held = peers.run_storescu(series.paths[0].parent, node.port, aet="CT1",
                                  called_aet="ICHTRIAGE")
        assert held.returncode == 0, held.stderr
        wait_for(lambda: node.query("select status from job") in ([("running",)], [("done",)]),
                 timeout=60, what="the job to start")
        kill_tree(node)
    leftover = node.query("select status, worker from job")
    assert leftover[0][0] == "running"
    with running_node(tmp_path, workers=1, settle=0.3, env=lease) as again:
        wait_for(lambda: again.query("select status from job") == [("done",)], timeout=90,
                 what="the job done after the restart (its lease has 600 s to run)")
        log = again.log_text()
        assert "1 jobs of ended workers queued again" in log
        assert again.query("select count(*) from triage_result") == [(1,)]
    assert not list((tmp_path / "var" / "data").rglob(".incoming-*"))


def rows_and_files(node: NodeProcess) -> tuple[set[str], set[str]]:
    """The instances' file paths in the index, and the .dcm files in the store (quarantine
    apart)."""
    indexed = {str(r[0]) for r in node.query("select file_path from instance")}
    root = node.data_dir / "data"
    on_disk = {str(p.relative_to(root)) for p in root.rglob("*.dcm")
               if not p.relative_to(root).parts[0].startswith(".")}
    return indexed, on_disk


@pytest.mark.parametrize("kill_after", [3, 25])
def test_a_sigkill_during_a_transfer_leaves_rows_and_files_agreeing(
        tmp_path: Path, kill_after: int) -> None:
    series = factories.ct_series(40)
    folder = tmp_path / "in"
    factories.write_series(folder, series)
    # The sender stores `kill_after` instances and keeps its association open: the kill comes
    # mid-transfer whatever the machine's speed (a storescu run could end before the poll saw
    # `kill_after` rows, and the series would then be complete, not cut off). A long settle
    # time: a pause of a loaded machine must not complete the series before the kill.
    with running_node(tmp_path, settle=10) as node:
        ae = AE(ae_title="CT1")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="ICHTRIAGE")
        assert assoc.is_established
        # pynetdicom 3.0 closes its socket only if shutdown() succeeds, and shutdown() of a
        # connection whose peer was killed can fail (ENOTCONN): the test closes it itself, or
        # the leaked socket's ResourceWarning fails whichever test the collector runs in.
        raw_socket = assoc.dul.socket.socket
        try:
            for ds in series[:kill_after]:
                assert assoc.send_c_store(ds).Status == 0x0000
            kill_tree(node)
        finally:
            assoc.abort()
            raw_socket.close()
    with running_node(tmp_path, settle=0.3) as again:
        indexed, on_disk = rows_and_files(again)
        assert indexed == on_disk  # every row has its file, every file its row
        assert not list((tmp_path / "var" / "data").rglob(".incoming-*"))
        time.sleep(1.0)  # settle times pass: the cut-off series is not complete by them
        assert again.query("select count(*) from job") == [(0,)]
        resent = peers.run_storescu(folder, again.port, aet="CT1", called_aet="ICHTRIAGE")
        assert resent.returncode == 0, resent.stderr
        wait_for(lambda: again.query("select status from job") == [("queued",)], timeout=20)
        assert again.query("select instance_count from series") == [(40,)]
        indexed, on_disk = rows_and_files(again)
        assert indexed == on_disk and len(indexed) == 40


@peers.needs(peers.have_orthanc(), "Orthanc")
def test_results_pending_at_a_sigkill_are_delivered_once_after_the_restart(
        tmp_path: Path) -> None:
    """The PACS is down when the result is made; the node is killed; the PACS comes back and
    the node restarts: the SR arrives, once."""
    pacs_port = peers.free_port()
    series = write_series(tmp_path / "in", seed=12, slices=10, size=256, subtypes=())
    destination = f"PACS@127.0.0.1:{pacs_port}"
    with running_node(tmp_path, "--destination", destination, workers=1, settle=0.3) as node:
        sent = peers.run_storescu(series.paths[0].parent, node.port, aet="CT1",
                                  called_aet="ICHTRIAGE")
        assert sent.returncode == 0, sent.stderr
        wait_for(lambda: node.query("select status, attempts > 0 from delivery")
                 == [("pending", True)], timeout=90, what="a delivery tried and pending")
        kill_tree(node)
    with peers.orthanc_server(tmp_path / "pacs", aet="PACS", dicom_port=pacs_port) as pacs:
        with running_node(tmp_path, "--destination", destination, workers=1,
                          settle=0.3) as again:
            wait_for(lambda: again.query("select status from delivery") == [("sent",)],
                     timeout=120, what="the delivery sent after the restart")
        reports = [s for s in pacs.rest("/series?expand")
                   if s["MainDicomTags"].get("Modality") == "SR"]
        assert len(reports) == 1 and len(reports[0]["Instances"]) == 1


def job_states(node: NodeProcess) -> dict[str, tuple[str, int]]:
    """(status, attempts) of each series' job, by Series Instance UID."""
    return {str(uid): (str(status), int(str(attempts))) for uid, status, attempts in node.query(
        "select s.series_uid, j.status, j.attempts from job j join series s "
        "on s.id = j.series_pk")}


@peers.needs(peers.have_orthanc(), "Orthanc")
def test_a_sigterm_with_jobs_queued_and_running_and_deliveries_pending_repeats_nothing(
        tmp_path: Path) -> None:
    """SIGTERM (systemctl stop) while one result waits for the PACS, one series is being
    triaged and one is queued: the running job is finished before the node exits, the rest
    is left for the restart, which triages the queued series and delivers every report,
    once; no job runs twice."""
    pacs_port = peers.free_port()
    destination = f"PACS@127.0.0.1:{pacs_port}"
    first = write_series(tmp_path / "first", seed=21, slices=10, size=128, subtypes=())
    # Full-size slices: seconds of triage, in which the node is stopped.
    running = write_series(tmp_path / "running", seed=22, slices=32, size=512, subtypes=())
    queued = write_series(tmp_path / "queued", seed=23, slices=10, size=128, subtypes=())
    # A failed delivery waits 5 minutes for its next try: only the restart's "try every
    # pending delivery now" delivers within the test's time.
    env = {"ICHTRIAGE_DELIVERY_RETRY_SECONDS": "300"}
    args = ("--destination", destination)

    def send(folder: Path) -> None:
        sent = peers.run_storescu(folder, node.port, aet="CT1", called_aet="ICHTRIAGE")
        assert sent.returncode == 0, sent.stderr

    with running_node(tmp_path, *args, workers=1, settle=0.3, env=env) as node:
        send(tmp_path / "first")
        wait_for(lambda: node.query("select status, attempts > 0 from delivery")
                 == [("pending", True)], timeout=90, what="the first report tried and pending")
        # Both sent before either is complete: the worker takes the first, the second
        # waits behind it, for as long as the first one's triage lasts.
        send(tmp_path / "running")
        send(tmp_path / "queued")
        wanted = {running.series_uid: ("running", 1), queued.series_uid: ("queued", 0)}
        wait_for(lambda: all(job_states(node).get(uid) == state
                             for uid, state in wanted.items()), timeout=60,
                 what="one series' job running and the other's queued")
        assert node.stop(timeout=120) == 0
    after = job_states(node)
    assert after == {first.series_uid: ("done", 1), running.series_uid: ("done", 1),
                     queued.series_uid: ("queued", 0)}
    assert node.query("select status, count(*) from delivery group by status") == [("pending", 2)]
    log = node.log_text()
    assert "SIGTERM received: stopping" in log and "recovered from an unclean stop" not in log
    with peers.orthanc_server(tmp_path / "pacs", aet="PACS", dicom_port=pacs_port) as pacs:
        with running_node(tmp_path, *args, workers=1, settle=0.3, env=env) as again:
            wait_for(lambda: again.query("select status, count(*) from delivery group by status")
                     == [("sent", 3)], timeout=120, what="three reports delivered")
            assert "pending deliveries were waiting for their next try: tried now" in \
                again.log_text()
            assert job_states(again) == {uid: ("done", 1) for uid in
                                         (first.series_uid, running.series_uid,
                                          queued.series_uid)}
            assert again.query("select count(*) from triage_result") == [(3,)]
            assert "recovered from an unclean stop" not in again.log_text()
        reports = [s for s in pacs.rest("/series?expand")
                   if s["MainDicomTags"].get("Modality") == "SR"]
        assert len(reports) == 3 and all(len(r["Instances"]) == 1 for r in reports)
        assert len(pacs.instances()) == 3
