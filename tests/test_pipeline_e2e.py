"""From the last slice to a report in a real PACS: the node, DCMTK's storescu and Orthanc."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import create_engine

from ml.phantom import write_series
from node.triage.sr import read_triage_sr
from storage.jobs import JobQueue
from tests import peers
from tests.nodeproc import NodeProcess, running_node, wait_for

pytestmark = [
    pytest.mark.slow,
    peers.needs(peers.have_dcmtk() and peers.have_orthanc(), "DCMTK or Orthanc"),
]


def query(node: NodeProcess, sql: str) -> list[tuple[object, ...]]:
    return node.query(sql)


def orthanc_srs(orthanc: peers.OrthancServer) -> dict[str, dict[str, tuple[float, bool]]]:
    """SRs stored in Orthanc, by Study Instance UID, read back from their files."""
    found = {}
    for item in orthanc.rest("/instances?expand"):
        with urllib.request.urlopen(f"{orthanc.url}/instances/{item['ID']}/file",
                                    timeout=10) as rsp:
            ds = dcmread(BytesIO(rsp.read()))
        if ds.Modality == "SR":
            found[str(ds.StudyInstanceUID)] = read_triage_sr(ds)
    return found


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[peers.OrthancServer]:
    with peers.orthanc_server(tmp_path / "orthanc", aet="PACS") as server:
        yield server


def send(node: NodeProcess, folder: Path) -> None:
    sent = peers.run_storescu(folder, node.port, aet="CT1", called_aet="ICHTRIAGE")
    assert sent.returncode == 0, sent.stderr


def test_bleed_and_normal_reports_reach_the_pacs_and_rank_the_worklist(
        tmp_path: Path, orthanc: peers.OrthancServer) -> None:
    bleed = write_series(tmp_path / "bleed", seed=901, slices=24, size=512, subtypes=("subdural",))
    normal = write_series(tmp_path / "normal", seed=902, slices=24, size=512)
    with running_node(tmp_path, "--destination", f"PACS@127.0.0.1:{orthanc.dicom_port}",
                      workers=1) as node:
        send(node, tmp_path / "normal")
        send(node, tmp_path / "bleed")
        wait_for(lambda: len(orthanc_srs(orthanc)) == 2, what="two SRs at Orthanc")
        reports = orthanc_srs(orthanc)
        assert reports[bleed.study_uid]["subdural"][1] is True
        assert reports[bleed.study_uid]["any"][1] is True
        assert reports[normal.study_uid]["any"][1] is False
        assert not any(present for _, present in reports[normal.study_uid].values())
        out = subprocess.run([sys.executable, "-m", "node", "worklist", "--json", "--db-url",
                              node.db_url], capture_output=True, text=True, check=True).stdout
        ranked = [s["StudyInstanceUID"] for s in json.loads(out)]
        assert ranked.index(bleed.study_uid) < ranked.index(normal.study_uid)
        assert query(node, "select status, attempts from delivery") == [("sent", 1), ("sent", 1)]


def test_a_pacs_that_is_down_gets_every_report_later_once(
        tmp_path: Path, orthanc: peers.OrthancServer) -> None:
    """The PACS is down while three results are made: the outbox holds them and tries again
    and again, its waits grown to their longest (minutes by default, a second here); when
    the PACS is back, each report arrives, once."""
    series = [write_series(tmp_path / f"in{i}", seed=903 + 10 * i, slices=10, size=128)
              for i in range(3)]
    orthanc.stop()
    retry = {"ICHTRIAGE_DELIVERY_RETRY_SECONDS": "0.1",
             "ICHTRIAGE_DELIVERY_RETRY_MAX_SECONDS": "1"}
    with running_node(tmp_path, "--destination", f"PACS@127.0.0.1:{orthanc.dicom_port}",
                      workers=1, env=retry) as node:
        for s in series:
            send(node, s.paths[0].parent)
        # 0.1 + 0.2 + 0.4 + 0.8 + 1 s: the sixth try of each waited the longest wait
        wait_for(lambda: query(node, "select count(*) from delivery where attempts >= 6")
                 == [(3,)], timeout=120, what="six failed tries of each delivery")
        assert query(node, "select distinct status from delivery") == [("pending",)]
        orthanc.start()
        wait_for(lambda: query(node, "select status, count(*) from delivery group by status")
                 == [("sent", 3)], timeout=60, what="the deliveries once Orthanc is up")
        assert sorted(orthanc_srs(orthanc)) == sorted(s.study_uid for s in series)
        time.sleep(2.5)  # a second delivery would come within the sender's longest wait
        assert len(orthanc.instances()) == 3
        assert "not reachable" in node.log_text()


def test_a_job_whose_worker_died_is_completed_once_by_another(tmp_path: Path) -> None:
    series = write_series(tmp_path / "in", seed=904, slices=10, size=128)
    env = {"ICHTRIAGE_JOB_LEASE_SECONDS": "2"}
    with running_node(tmp_path, workers=0, env=env) as node:
        send(node, tmp_path / "in")
        wait_for(lambda: query(node, "select status from job") == [("queued",)], what="the job")
        engine = create_engine(node.db_url)
        dead = JobQueue(engine, lease_seconds=2).claim("worker-that-dies")
        engine.dispose()
        assert dead is not None
        worker = subprocess.Popen(
            [sys.executable, "-m", "node", "worker", "--db-url", node.db_url, "--data-dir",
             str(node.data_dir)], env={**peers.nodelay_env(), **env},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: query(node, "select status from job") == [("done",)], timeout=90,
                     what="the job done by the second worker")
        finally:
            worker.terminate()
            log = worker.communicate(timeout=60)[0].decode()
        assert "lease of worker worker-that-dies expired" in log
        assert query(node, "select attempts from job") == [(2,)]
        assert query(node, "select count(*) from triage_result") == [(1,)]
        assert query(node, f"select status from series where series_uid = '{series.series_uid}'"
                     ) == [("done",)]


def test_series_that_are_not_head_ct_are_stored_not_triaged(tmp_path: Path) -> None:
    chest = write_series(tmp_path / "chest", seed=905, slices=10, size=64)
    single = write_series(tmp_path / "single", seed=906, slices=1, size=64)
    for path in chest.paths:  # the same scanner, another body part
        ds = dcmread(path)
        ds.BodyPartExamined = "CHEST"
        ds.save_as(path, enforce_file_format=True)
    with running_node(tmp_path) as node:
        send(node, tmp_path / "chest")
        send(node, tmp_path / "single")
        wait_for(lambda: len(query(node, "select 1 from series where status='not_eligible'")) == 2,
                 what="both series decided")
        reasons = dict(query(node, "select series_uid, status_reason from series"))
        assert reasons[chest.series_uid] == "body part CHEST is not a head"
        assert reasons[single.series_uid] == "1 slice(s), fewer than 8"
        assert query(node, "select count(*) from job") == [(0,)]
        assert query(node, "select count(*) from instance") == [(11,)]
