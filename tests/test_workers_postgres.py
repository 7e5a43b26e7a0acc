"""Many workers on one PostgreSQL (issue 17): stand-alone `ichtriage worker` processes, stand-ins
for worker hosts, share one database and one file store with a receiving node that runs no
triage of its own (`--workers 0`). Each series is triaged exactly once; a worker killed with
SIGKILL mid-job loses its job when the lease runs out and another one does it, once; a
PostgreSQL restarted while instances arrive and while a series is triaged costs failed
C-STOREs (0xA700, the sender retries) and nothing that was acknowledged.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from ml.phantom import write_series
from tests import peers
from tests.nodeproc import NodeProcess, running_node, running_workers, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.postgres,
              peers.needs(peers.have_postgres(), "PostgreSQL"),
              peers.needs(peers.have_dcmtk(), "DCMTK")]

SHORT_LEASE = {"ICHTRIAGE_JOB_LEASE_SECONDS": "3"}


def phantom_folders(root: Path, count: int, *, first_seed: int, slices: int = 8,
                    size: int = 64) -> list[Path]:
    """`count` small phantom head series (one folder each): few, small slices keep the CPU low."""
    return [write_series(root / f"s{i:03d}", seed=first_seed + i, slices=slices, size=size)
            .paths[0].parent for i in range(count)]


def finished_jobs(node: NodeProcess) -> int:
    return int(node.query("select count(*) from job where status in ('done', 'failed')")[0][0])


def assert_each_series_triaged_once(node: NodeProcess, series_count: int) -> None:
    """Every CT series has one job done, one result and one SR in the store; no other SR."""
    jobs = node.query("select status, count(*) from job group by status")
    assert jobs == [("done", series_count)]
    per_series = node.query(
        "select s.id, count(r.id) from series s left join triage_result r on r.series_pk = s.id"
        " where s.modality = 'CT' group by s.id")
    assert len(per_series) == series_count
    assert {count for _, count in per_series} == {1}
    reports = {r[0] for r in node.query("select sr_sop_uid from triage_result")}
    stored = {r[0] for r in node.query(
        "select i.sop_uid from instance i join series s on s.id = i.series_pk"
        " where s.modality = 'SR'")}
    assert len(reports) == series_count and stored == reports


def assert_acknowledged_kept(node: NodeProcess, acknowledged: set[str]) -> None:
    """Each instance answered with success has its row, and its file under the row's path."""
    rows = dict(node.query("select sop_uid, file_path from instance"))
    missing = acknowledged - rows.keys()
    assert not missing, f"{len(missing)} acknowledged instances have no row"
    for sop_uid in acknowledged:
        path = node.data_dir / "data" / str(rows[sop_uid])
        assert dcmread(path, stop_before_pixels=True).SOPInstanceUID == sop_uid


def test_three_workers_share_the_queue_and_triage_each_series_once(tmp_path: Path) -> None:
    folders = phantom_folders(tmp_path / "in", 30, first_seed=1700)
    with (peers.postgres_server(tmp_path / "pg") as url,
          running_node(tmp_path / "node", db_url=url, workers=0, settle=0.5) as node,
          running_workers(tmp_path, 3, data_dir=node.data_dir, db_url=url) as workers):
        assert "0 triage workers" in node.log_text()
        sent = peers.run_storescu(tmp_path / "in", node.port, aet="CT1", called_aet="ICHTRIAGE")
        assert sent.returncode == 0, sent.stderr
        wait_for(lambda: finished_jobs(node) == len(folders), timeout=180,
                 what="every series triaged")
        assert_each_series_triaged_once(node, len(folders))
        by_worker = dict(node.query("select worker, count(*) from job group by worker"))
        prefixes = [w.name_prefix for w in workers]
        assert all(any(name.startswith(p) for p in prefixes) for name in by_worker)
        assert len(by_worker) > 1, f"one worker did every job: {by_worker}"
        assert node.query("select max(attempts) from job") == [(1,)]


def test_a_job_of_a_worker_killed_mid_job_is_leased_again_and_done_once(tmp_path: Path) -> None:
    # A series of 24 full-size slices: the job runs for seconds, and the kill comes then.
    write_series(tmp_path / "in" / "big", seed=1790, slices=24, size=512)
    with (peers.postgres_server(tmp_path / "pg") as url,
          running_node(tmp_path / "node", db_url=url, workers=0, settle=0.3) as node,
          running_workers(tmp_path, 2, data_dir=node.data_dir, db_url=url,
                          env=SHORT_LEASE) as workers):
        sent = peers.run_storescu(tmp_path / "in", node.port, aet="CT1", called_aet="ICHTRIAGE")
        assert sent.returncode == 0, sent.stderr
        wait_for(lambda: node.query("select status from job") == [("running",)], timeout=60,
                 what="the job to start")
        holder = node.query("select worker from job")[0][0]
        victim = next(w for w in workers if str(holder).startswith(w.name_prefix))
        victim.kill()
        survivor = next(w for w in workers if w is not victim)
        assert node.query("select status, attempts from job") == [("running", 1)], \
            "the job ended before the kill: make its series bigger"
        wait_for(lambda: node.query("select status from job") == [("done",)], timeout=90,
                 what="the job done by the surviving worker")
        (worker, attempts), = node.query("select worker, attempts from job")
        assert str(worker).startswith(survivor.name_prefix) and attempts == 2
        assert f"lease of worker {holder} expired; reclaimed by" in survivor.log_text()
        assert_each_series_triaged_once(node, 1)


def store_all(assoc: object, paths: list[Path]) -> dict[str, int]:
    """C-STORE each file on the open association; the status of each, by SOP Instance UID."""
    statuses = {}
    for path in paths:
        ds = dcmread(path)
        answer = assoc.send_c_store(ds)  # type: ignore[attr-defined]
        statuses[str(ds.SOPInstanceUID)] = int(answer.Status) if "Status" in answer else -1
    return statuses


def test_postgres_restarts_during_ingest_and_triage_lose_nothing_acknowledged(
        tmp_path: Path) -> None:
    before, during, after = (phantom_folders(tmp_path / "in" / name, 2, first_seed=seed)
                             for name, seed in (("before", 1800), ("during", 1810),
                                                ("after", 1820)))
    big = write_series(tmp_path / "in" / "big", seed=1830, slices=24, size=512).paths
    with (peers.postgres_cluster(tmp_path / "pg") as pg,
          running_node(tmp_path / "node", db_url=pg.url, workers=0, settle=0.5) as node,
          running_workers(tmp_path, 2, data_dir=node.data_dir, db_url=pg.url,
                          env=SHORT_LEASE) as workers):
        ae = AE(ae_title="CT1")
        ae.add_requested_context(CTImageStorage)
        statuses: dict[str, int] = {}
        # Ingest: one association held open while the database goes away and comes back.
        assoc = ae.associate("127.0.0.1", node.port, ae_title="ICHTRIAGE")
        assert assoc.is_established
        try:
            statuses |= store_all(assoc, [p for f in before for p in sorted(f.iterdir())])
            pg.stop()
            outage = store_all(assoc, [p for f in during for p in sorted(f.iterdir())])
            pg.start()
            statuses |= store_all(assoc, [p for f in after for p in sorted(f.iterdir())])
        finally:
            assoc.release()
        assert set(outage.values()) == {0xA700}, outage
        assert set(statuses.values()) == {0x0000}
        # The scanner sends again what failed.
        resent = peers.run_storescu(tmp_path / "in" / "during", node.port, aet="CT1",
                                    called_aet="ICHTRIAGE")
        assert resent.returncode == 0, resent.stderr
        statuses |= dict.fromkeys(outage, 0x0000)
        wait_for(lambda: finished_jobs(node) == 6, timeout=120, what="the six series triaged")
        # Triage: the database goes away while a worker reads a big series.
        sent = peers.run_storescu(big, node.port, aet="CT1", called_aet="ICHTRIAGE")
        assert sent.returncode == 0, sent.stderr
        statuses |= {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): 0 for p in big}
        wait_for(lambda: node.query("select count(*) from job where status = 'running'")
                 == [(1,)], timeout=60, what="the big series' job to start")
        pg.stop()
        time.sleep(4)  # longer than the lease: the worker's renewals fail meanwhile
        pg.start()
        wait_for(lambda: finished_jobs(node) == 7, timeout=120,
                 what="the big series triaged after the restart")
        assert_each_series_triaged_once(node, 7)
        assert_acknowledged_kept(node, set(statuses))
        for worker in workers:
            assert worker.proc.poll() is None, worker.log_text()[-3000:]
        assert "ready:" in node.log_text() and node.proc.poll() is None
