"""Many workers on one PostgreSQL (issue 17): stand-alone `ichtriage worker` processes, stand-ins
for worker hosts, share one database and one file store with a receiving node that runs no
triage of its own (`--workers 0`). Each series is triaged exactly once; a worker killed with
SIGKILL mid-job loses its job when the lease runs out and another one does it, once; a
PostgreSQL restarted while instances arrive and while a series is triaged costs failed
C-STOREs (0xA700, the sender retries) and nothing that was acknowledged.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from ml.phantom import PhantomSeries, write_series
from storage.db import upgrade
from tests import peers
from tests.nodeproc import (
    NodeProcess,
    WorkerProcess,
    running_node,
    running_workers,
    wait_for,
    wait_ready,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres,
              peers.needs(peers.have_postgres(), "PostgreSQL"),
              peers.needs(peers.have_dcmtk(), "DCMTK")]

SHORT_LEASE = {"ICHTRIAGE_JOB_LEASE_SECONDS": "8"}


def phantom_series(root: Path, count: int, *, first_seed: int, slices: int = 8,
                   size: int = 64) -> list[PhantomSeries]:
    """`count` small phantom head series (a folder each): few, small slices keep the CPU low."""
    return [write_series(root / f"s{i:03d}", seed=first_seed + i, slices=slices, size=size)
            for i in range(count)]


@contextmanager
def node_and_workers(tmp: Path, db_url: str, count: int, *, settle: float = 0.5,
                     env: dict[str, str] | None = None,
                     ) -> Iterator[tuple[NodeProcess, list[WorkerProcess]]]:
    """The receiving node without triage of its own (`--workers 0`) and `count` stand-alone
    workers on one database and one data dir, started together after `db upgrade` (as the
    deployment guide says: the schema first, then the processes)."""
    upgrade(db_url)
    with running_workers(tmp, count, data_dir=tmp / "node" / "var", db_url=db_url, env=env,
                         wait=False) as workers:
        with running_node(tmp / "node", db_url=db_url, workers=0, settle=settle,
                          env=env) as node:
            for worker in workers:
                wait_ready(worker)
            yield node, workers


@dataclass
class Pool:
    """What this module's tests share: a PostgreSQL of their own (it is restarted), the
    receiving node, and three stand-alone workers with 8 s leases."""

    pg: peers.PostgresServer
    node: NodeProcess
    workers: list[WorkerProcess]


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    """Started once for the module (the processes' start is most of the time of these tests);
    the tests run in file order: the second kills a worker, the third restarts PostgreSQL."""
    tmp = tmp_path_factory.mktemp("pool")
    with (peers.postgres_cluster(tmp / "pg") as pg,
          node_and_workers(tmp, pg.url, 3, env=SHORT_LEASE) as (node, workers)):
        yield Pool(pg, node, workers)


def jobs_finished(node: NodeProcess, series: list[PhantomSeries]) -> bool:
    uids = ", ".join(f"'{s.series_uid}'" for s in series)
    finished = node.query(
        "select count(*) from job j join series s on s.id = j.series_pk"
        f" where s.series_uid in ({uids}) and j.status in ('done', 'failed')")
    return finished == [(len(series),)]


def assert_each_triaged_once(node: NodeProcess, series: list[PhantomSeries]) -> None:
    """Each series has one job, done, one result and one SR in the store, and no SR stands
    in the store for a result that is not recorded (a second worker's)."""
    uids = ", ".join(f"'{s.series_uid}'" for s in series)
    jobs = node.query("select j.status, count(*) from job j join series s on s.id = j.series_pk"
                      f" where s.series_uid in ({uids}) group by j.status")
    assert jobs == [("done", len(series))]
    per_series = node.query(
        "select s.id, count(r.id) from series s left join triage_result r on r.series_pk = s.id"
        f" where s.series_uid in ({uids}) group by s.id")
    assert len(per_series) == len(series) and {count for _, count in per_series} == {1}
    reports = {r[0] for r in node.query(
        "select r.sr_sop_uid from triage_result r join series s on s.id = r.series_pk"
        f" where s.series_uid in ({uids})")}
    assert len(reports) == len(series)
    every_report = {r[0] for r in node.query("select sr_sop_uid from triage_result")}
    stored = {r[0] for r in node.query(
        "select i.sop_uid from instance i join series s on s.id = i.series_pk"
        " where s.modality = 'SR'")}
    assert stored == every_report


def assert_acknowledged_kept(node: NodeProcess, acknowledged: set[str]) -> None:
    """Each instance answered with success has its row, and its file under the row's path."""
    rows = dict(node.query("select sop_uid, file_path from instance"))
    missing = acknowledged - rows.keys()
    assert not missing, f"{len(missing)} acknowledged instances have no row"
    for sop_uid in acknowledged:
        path = node.data_dir / "data" / str(rows[sop_uid])
        assert dcmread(path, stop_before_pixels=True).SOPInstanceUID == sop_uid


def test_three_workers_share_the_queue_and_triage_each_series_once(
        tmp_path: Path, pool: Pool) -> None:
    node, workers = pool.node, pool.workers
    series = phantom_series(tmp_path / "in", 30, first_seed=1700)
    assert "0 triage workers" in node.log_text()
    sent = peers.run_storescu(tmp_path / "in", node.port, aet="CT1", called_aet="ICHTRIAGE")
    assert sent.returncode == 0, sent.stderr
    wait_for(lambda: jobs_finished(node, series), timeout=180, what="every series triaged")
    assert_each_triaged_once(node, series)
    by_worker = dict(node.query("select worker, count(*) from job group by worker"))
    prefixes = [w.name_prefix for w in workers]
    assert all(any(str(name).startswith(p) for p in prefixes) for name in by_worker)
    assert len(by_worker) > 1, f"one worker did every job: {by_worker}"
    assert node.query("select max(attempts) from job") == [(1,)]


def test_a_job_of_a_worker_killed_mid_job_is_leased_again_and_done_once(
        tmp_path: Path, pool: Pool) -> None:
    node, workers = pool.node, pool.workers
    # 24 full-size slices: the job runs for seconds, and the kill comes then.
    big = write_series(tmp_path / "in", seed=1790, slices=24, size=512)
    sent = peers.run_storescu(tmp_path / "in", node.port, aet="CT1", called_aet="ICHTRIAGE")
    assert sent.returncode == 0, sent.stderr
    job = ("select j.status, j.attempts, j.worker from job j join series s"
           f" on s.id = j.series_pk where s.series_uid = '{big.series_uid}'")
    wait_for(lambda: [r[0] for r in node.query(job)] == ["running"], timeout=60,
             what="the job to start")
    holder = str(node.query(job)[0][2])
    victim = next(w for w in workers if holder.startswith(w.name_prefix))
    victim.kill()
    assert node.query(job) == [("running", 1, holder)], \
        "the job ended before the kill: make its series bigger"
    wait_for(lambda: [r[0] for r in node.query(job)] == ["done"], timeout=90,
             what="the job done by another worker")
    (_, attempts, worker), = node.query(job)
    survivor = next(w for w in workers if str(worker).startswith(w.name_prefix))
    assert survivor is not victim and attempts == 2
    assert f"lease of worker {holder} expired; reclaimed by {worker}" in survivor.log_text()
    assert_each_triaged_once(node, [big])


def store_all(assoc: object, paths: list[Path]) -> dict[str, int]:
    """C-STORE each file on the open association; the status of each, by SOP Instance UID."""
    statuses = {}
    for path in paths:
        ds = dcmread(path)
        answer = assoc.send_c_store(ds)  # type: ignore[attr-defined]
        statuses[str(ds.SOPInstanceUID)] = int(answer.Status) if "Status" in answer else -1
    return statuses


def test_postgres_restarts_during_ingest_and_triage_lose_nothing_acknowledged(
        tmp_path: Path, pool: Pool) -> None:
    before, during, after = (phantom_series(tmp_path / "in" / name, 2, first_seed=seed)
                             for name, seed in (("before", 1800), ("during", 1810),
                                                ("after", 1820)))
    big = write_series(tmp_path / "in" / "big", seed=1830, slices=24, size=512)
    pg, node, workers = pool.pg, pool.node, pool.workers
    ae = AE(ae_title="CT1")
    ae.add_requested_context(CTImageStorage)
    statuses: dict[str, int] = {}
    # Ingest: one association held open while the database goes away and comes back.
    assoc = ae.associate("127.0.0.1", node.port, ae_title="ICHTRIAGE")
    assert assoc.is_established
    try:
        statuses |= store_all(assoc, [p for s in before for p in s.paths])
        pg.stop()
        outage = store_all(assoc, [p for s in during for p in s.paths])
        # An association opened during the outage is accepted; its instances are refused.
        late = ae.associate("127.0.0.1", node.port, ae_title="ICHTRIAGE")
        assert late.is_established
        try:
            outage |= store_all(late, [during[0].paths[0]])
        finally:
            late.release()
        pg.start()
        statuses |= store_all(assoc, [p for s in after for p in s.paths])
    finally:
        assoc.release()
    assert set(outage.values()) == {0xA700}, outage
    assert set(statuses.values()) == {0x0000}
    # The scanner sends again what failed.
    resent = peers.run_storescu(tmp_path / "in" / "during", node.port, aet="CT1",
                                called_aet="ICHTRIAGE")
    assert resent.returncode == 0, resent.stderr
    statuses |= dict.fromkeys(outage, 0x0000)
    small = [*before, *during, *after]
    wait_for(lambda: jobs_finished(node, small), timeout=120, what="the six series triaged")
    # Triage: the database goes away while a worker reads a big series.
    sent = peers.run_storescu(list(big.paths), node.port, aet="CT1",
                              called_aet="ICHTRIAGE")
    assert sent.returncode == 0, sent.stderr
    statuses |= dict.fromkeys(big.sop_uids, 0x0000)
    wait_for(lambda: node.query("select count(*) from job where status = 'running'")
             == [(1,)], timeout=60, what="the big series' job to start")
    pg.stop()
    time.sleep(3)  # the worker's lease renewals fail meanwhile
    pg.start()
    wait_for(lambda: jobs_finished(node, [*small, big]), timeout=120,
             what="the big series triaged after the restart")
    assert_each_triaged_once(node, [*small, big])
    assert_acknowledged_kept(node, set(statuses))
    for worker in workers:  # each is alive, or the one the test before killed
        assert worker.proc.poll() in (None, -signal.SIGKILL), worker.log_text()[-3000:]
    assert "ready:" in node.log_text() and node.proc.poll() is None
    # The outages are said in a line each, not a traceback per try or per instance.
    assert "refused (0xA700 out of resources): database unavailable" in node.log_text()
    for log in [node.log_text(), *(w.log_text() for w in workers)]:
        assert "Traceback" not in log
