"""The job queue and the settle scheduler, on SQLite and on PostgreSQL."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, func, select, update

from node.dicom.eligibility import EligibilityRules, SeriesFacts
from node.scheduler import SeriesMonitor
from storage.db import READ_ONLY
from storage.files import FileStore
from storage.instances import InstanceMeta, InstanceStore
from storage.jobs import ClaimedJob, JobQueue
from storage.models import Instance, Job, JobStatus, Series, SeriesStatus, utcnow
from storage.retry import RetryPolicy
from storage.series import SeriesIndex

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"


def enqueue(engine: Engine, queue: JobQueue, lock: str) -> int | None:
    with engine.begin() as conn:
        return queue.enqueue(conn, kind="triage", queueing_lock=lock)


def test_a_lock_is_queued_once(engine: Engine) -> None:
    queue = JobQueue(engine)
    first = enqueue(engine, queue, "series:1.2.3")
    assert first is not None
    assert enqueue(engine, queue, "series:1.2.3") is None
    assert enqueue(engine, queue, "series:1.2.4") is not None
    # once running, the same series may be queued again (new instances arrived meanwhile)
    job = queue.claim("w1")
    assert job is not None and job.id == first
    assert enqueue(engine, queue, "series:1.2.3") is not None


def test_claim_complete(engine: Engine) -> None:
    queue = JobQueue(engine)
    enqueue(engine, queue, "a")
    job = queue.claim("w1")
    assert job is not None and job.attempts == 1 and job.worker == "w1"
    assert queue.claim("w2") is None  # nothing else runnable
    assert queue.heartbeat(job)
    assert queue.complete(job)
    with engine.connect() as conn:
        row = conn.execute(select(Job)).mappings().one()
    assert row["status"] == JobStatus.DONE and row["finished_at"] is not None


def test_failures_retry_with_backoff_then_fail_with_reason(engine: Engine) -> None:
    queue = JobQueue(engine, retry=RetryPolicy(max_attempts=2, backoff_seconds=0.2))
    enqueue(engine, queue, "a")
    job = queue.claim("w1")
    assert job is not None
    assert queue.fail(job, "pixel data cannot be decoded") == JobStatus.QUEUED
    assert queue.claim("w1") is None  # backing off
    time.sleep(0.3)
    job = queue.claim("w1")
    assert job is not None and job.attempts == 2
    assert queue.fail(job, "pixel data cannot be decoded") == JobStatus.FAILED
    with engine.connect() as conn:
        row = conn.execute(select(Job)).mappings().one()
    assert row["status"] == JobStatus.FAILED
    assert row["last_error"] == "pixel data cannot be decoded"
    # a failed job does not block the queue
    enqueue(engine, queue, "b")
    nxt = queue.claim("w1")
    assert nxt is not None and nxt.queueing_lock == "b"


def test_an_expired_lease_is_taken_over(engine: Engine) -> None:
    queue = JobQueue(engine, lease_seconds=0.2, retry=RetryPolicy(max_attempts=2))
    enqueue(engine, queue, "a")
    dead = queue.claim("dies-mid-job")
    assert dead is not None
    assert queue.claim("w2") is None
    time.sleep(0.3)
    taken = queue.claim("w2")
    assert taken is not None and taken.id == dead.id and taken.attempts == 2
    assert not queue.complete(dead)  # the dead worker's late answer is refused
    assert queue.complete(taken)


def test_a_job_whose_worker_always_dies_ends_failed(engine: Engine) -> None:
    queue = JobQueue(engine, lease_seconds=0.1, retry=RetryPolicy(max_attempts=1))
    enqueue(engine, queue, "a")
    assert queue.claim("w1") is not None
    time.sleep(0.2)
    assert queue.claim("w2") is None
    with engine.connect() as conn:
        row = conn.execute(select(Job)).mappings().one()
    assert row["status"] == JobStatus.FAILED and "lease expired" in row["last_error"]


def test_concurrent_claims_never_share_a_job(engine: Engine) -> None:
    queue = JobQueue(engine)
    for i in range(20):
        enqueue(engine, queue, f"s{i}")
    claimed: list[ClaimedJob] = []
    lock = threading.Lock()

    def work(name: str) -> None:
        while (job := queue.claim(name)) is not None:
            with lock:
                claimed.append(job)
            queue.complete(job)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(j.queueing_lock for j in claimed) == sorted(f"s{i}" for i in range(20))


def test_retry_policy_checks_and_delays() -> None:
    policy = RetryPolicy(max_attempts=5, backoff_seconds=2, backoff_factor=3,
                         max_backoff_seconds=10)
    assert [policy.delay(n) for n in (1, 2, 3)] == [
        timedelta(seconds=2), timedelta(seconds=6), timedelta(seconds=10)]
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)


# -- the settle scheduler ----------------------------------------------------------------------

def _store_series(store: InstanceStore, series: str, n: int, *, sop_class: str = CT,
                  modality: str = "CT", image_type: str = "ORIGINAL\\PRIMARY\\AXIAL",
                  first: int = 1) -> None:
    for i in range(first, first + n):
        store.store(InstanceMeta(sop_class_uid=sop_class, sop_uid=f"{series}.{i}",
                                 study_uid="1.2.3", series_uid=series,
                                 transfer_syntax_uid="1.2.840.10008.1.2.1", modality=modality,
                                 body_part="HEAD", image_type=image_type), [b"x"])


def _monitor(engine: Engine, settle: float = 0.0) -> SeriesMonitor:
    return SeriesMonitor(SeriesIndex(engine), JobQueue(engine), EligibilityRules(min_slices=3),
                         settle_seconds=settle)


def _series(engine: Engine, uid: str) -> tuple[SeriesStatus, str]:
    with engine.connect() as conn:
        row = conn.execute(select(Series.status, Series.status_reason)
                           .where(Series.series_uid == uid)).one()
    return row[0], row[1]


def test_settled_series_are_queued_or_skipped_with_reason(engine: Engine, tmp_path: Path) -> None:
    store = InstanceStore(engine, FileStore(tmp_path))
    _store_series(store, "1.2.3.1", 4)
    _store_series(store, "1.2.3.2", 4, sop_class=MR, modality="MR")
    _store_series(store, "1.2.3.3", 2)
    _store_series(store, "1.2.3.4", 3, image_type="ORIGINAL\\PRIMARY\\LOCALIZER")
    _store_series(store, "1.2.3.5", 3, image_type="DERIVED\\SECONDARY\\AXIAL")
    # a scout among axial slices: the series is triaged, the scout left out by the worker
    _store_series(store, "1.2.3.6", 4)
    _store_series(store, "1.2.3.6", 1, image_type="ORIGINAL\\PRIMARY\\LOCALIZER", first=5)
    decided = _monitor(engine).run_once()
    assert decided["1.2.3.1"] == "queued"
    assert "modality MR" in decided["1.2.3.2"]
    assert "2 slice(s), fewer than 3" in decided["1.2.3.3"]
    assert decided["1.2.3.4"] == "localizer (scout) images only"
    assert "not ORIGINAL" in decided["1.2.3.5"]
    assert decided["1.2.3.6"] == "queued"
    assert _series(engine, "1.2.3.2") == (SeriesStatus.NOT_ELIGIBLE, decided["1.2.3.2"])
    with engine.connect() as conn:
        jobs = conn.execute(select(Job.queueing_lock, Job.status)).all()
    assert sorted(jobs) == [("series:1.2.3.1", JobStatus.QUEUED),
                            ("series:1.2.3.6", JobStatus.QUEUED)]
    assert _monitor(engine).run_once() == {}  # decided once


def test_one_run_writes_its_decisions_in_one_transaction(engine: Engine, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Many settled series (one-instance studies) cost the write lock once per run, not once
    per series; a series that received an instance after it was read is left for later."""
    from sqlalchemy import event

    store = InstanceStore(engine, FileStore(tmp_path))
    for i in range(1, 6):
        _store_series(store, f"1.2.3.{i}", 3)
    monitor = _monitor(engine)
    reason_to_skip = monitor._reason_to_skip

    receiving = threading.Event()  # the store's own transactions are not counted

    def late_slice_in_series_4(series):  # type: ignore[no-untyped-def]
        found = reason_to_skip(series)
        if series.series_uid == "1.2.3.4":
            receiving.set()
            _store_series(store, "1.2.3.4", 1, first=4)  # arrives between read and write
            receiving.clear()
        return found

    begun: list[object] = []

    def on_begin(conn: Connection) -> None:  # write transactions (not the readers')
        if not receiving.is_set() and not conn.get_execution_options().get(READ_ONLY):
            begun.append(conn)

    monkeypatch.setattr(monitor, "_reason_to_skip", late_slice_in_series_4)
    event.listen(engine, "begin", on_begin)
    try:
        decided = monitor.run_once()
    finally:
        event.remove(engine, "begin", on_begin)
    assert len(begun) == 1
    assert decided == {f"1.2.3.{i}": "queued" for i in (1, 2, 3, 5)}
    assert _series(engine, "1.2.3.4")[0] == SeriesStatus.RECEIVING
    assert monitor.run_once() == {"1.2.3.4": "queued"}


def test_a_series_still_receiving_waits_for_the_settle_time(engine: Engine, tmp_path: Path) -> None:
    store = InstanceStore(engine, FileStore(tmp_path))
    _store_series(store, "1.2.3.1", 4)
    monitor = _monitor(engine, settle=30)
    assert monitor.run_once() == {}
    with engine.begin() as conn:  # as if the last slice came 31 s ago
        conn.execute(update(Series).values(last_received_at=utcnow() - timedelta(seconds=31)))
    assert monitor.run_once() == {"1.2.3.1": "queued"}


def test_late_instances_queue_the_series_again(engine: Engine, tmp_path: Path) -> None:
    store = InstanceStore(engine, FileStore(tmp_path))
    queue = JobQueue(engine)
    _store_series(store, "1.2.3.1", 4)
    monitor = _monitor(engine)
    assert monitor.run_once() == {"1.2.3.1": "queued"}
    job = queue.claim("w1")
    assert job is not None and job.series_revision == 4
    _store_series(store, "1.2.3.1", 2, first=5)  # two more slices while the job runs
    assert _series(engine, "1.2.3.1")[0] == SeriesStatus.RECEIVING
    assert monitor.run_once() == {"1.2.3.1": "queued"}
    again = queue.claim("w2")
    assert again is not None and again.series_revision == 6 and again.id != job.id


def test_multi_frame_ct_classes_and_mixed_image_types_are_eligible() -> None:
    rules = EligibilityRules(min_slices=3)

    def facts(sop_class: str, *types: str) -> SeriesFacts:
        return SeriesFacts(modality="CT", body_part="HEAD", sop_classes=frozenset({sop_class}),
                           image_types=frozenset(types), slices=24)

    legacy = "1.2.840.10008.5.1.4.1.1.2.2"  # Legacy Converted Enhanced CT Image Storage
    assert rules.reason_to_skip(facts(legacy, "ORIGINAL\\PRIMARY\\AXIAL")) is None
    assert rules.reason_to_skip(facts(CT, "ORIGINAL\\PRIMARY\\VOLUME\\NONE")) is None
    assert rules.reason_to_skip(facts(CT, "ORIGINAL\\PRIMARY\\AXIAL",
                                      "DERIVED\\SECONDARY\\REFORMATTED")) is None
    assert rules.reason_to_skip(facts(CT, "DERIVED\\SECONDARY\\REFORMATTED")) == (
        "image type DERIVED\\SECONDARY\\REFORMATTED is not ORIGINAL axial")


def test_jobs_of_ended_workers_on_this_host_are_queued_again_at_once(engine: Engine) -> None:
    """A restarted node takes back at once the jobs its own dead workers held (the lease has
    not expired); a live worker's job, another host's, and a job tried to the limit are
    treated as they must be."""
    queue = JobQueue(engine, lease_seconds=300, retry=RetryPolicy(max_attempts=2))
    ids = {name: enqueue(engine, queue, f"series:{name}")
           for name in ("dead", "alive", "remote", "tired")}
    workers = {"dead": "ct-node:4001:1", "alive": "ct-node:4002:1", "remote": "gpu-7:4001:1",
               "tired": "ct-node:4003:1"}
    for worker in workers.values():  # each claims the next job, in the order queued
        assert queue.claim(worker) is not None
    with engine.begin() as conn:  # "tired" is on its last try
        conn.execute(update(Job).where(Job.id == ids["tired"]).values(attempts=2))
    done = queue.reclaim_dead("ct-node", alive=lambda pid: pid == 4002)
    assert sorted(done) == sorted([ids["dead"], ids["tired"]])
    with engine.connect() as conn:
        status = dict(conn.execute(select(Job.id, Job.status)).all())
    assert status[ids["dead"]] == JobStatus.QUEUED
    assert status[ids["alive"]] == status[ids["remote"]] == JobStatus.RUNNING
    assert status[ids["tired"]] == JobStatus.FAILED
    again = queue.claim("ct-node:5000:1")  # due now, not after the 300 s lease
    assert again is not None and again.id == ids["dead"]


def test_worker_names_parse() -> None:
    from storage.jobs import worker_process

    assert worker_process("ct-node.local:123:140") == ("ct-node.local", 123)
    assert worker_process("fe80::1:77:9") == ("fe80::1", 77)
    assert worker_process("test") is None and worker_process(":1:2") is None


def test_a_live_worker_keeps_its_short_lease(engine: Engine) -> None:
    queue = JobQueue(engine, lease_seconds=0.3)
    enqueue(engine, queue, "series:kept")
    job = queue.claim("ct-node:1:1")
    assert job is not None
    with queue.kept_alive(job):
        time.sleep(1.0)  # three leases long: renewed meanwhile
        assert queue.claim("ct-node:2:1") is None
    time.sleep(0.5)  # no longer renewed: the lease runs out and another worker takes it
    taken = queue.claim("ct-node:2:1")
    assert taken is not None and taken.id == job.id


def test_a_series_whose_transfer_was_aborted_waits_for_the_resend(engine: Engine,
                                                                  tmp_path: Path) -> None:
    """Half a series came over an aborted association (or one a node restart cut off): it is
    not complete by the settle time alone; the rest, sent again over a released association,
    completes it; a sender that never comes back gets it triaged after aborted_wait."""
    from storage.associations import AssociationLog

    log = AssociationLog(engine)
    store = InstanceStore(engine, FileStore(tmp_path))

    def transfer(series: str, first: int, n: int, end: str) -> None:
        pk = log.opened(calling_ae="CT1", called_ae="NODE", peer_host="127.0.0.1", peer_port=1)
        for i in range(first, first + n):
            store.store(InstanceMeta(sop_class_uid=CT, sop_uid=f"{series}.{i}",
                                     study_uid="1.2.3", series_uid=series,
                                     transfer_syntax_uid="1.2.840.10008.1.2.1", modality="CT",
                                     body_part="HEAD", image_type="ORIGINAL\\PRIMARY\\AXIAL"),
                        [b"x"], association_pk=pk)
        if end != "open":
            log.closed(pk, state=end, stored=n, failed=0, duplicates=0)

    monitor = SeriesMonitor(SeriesIndex(engine), JobQueue(engine),
                            EligibilityRules(min_slices=3), settle_seconds=0,
                            aborted_wait_seconds=60)
    transfer("1.2.3.7", 1, 4, "aborted")
    transfer("1.2.3.8", 1, 4, "open")  # the node stopped mid-transfer
    assert log.close_left_open() == 1
    transfer("1.2.3.9", 1, 4, "released")
    assert monitor.run_once() == {"1.2.3.9": "queued"}
    transfer("1.2.3.7", 5, 4, "released")  # the sender sends the rest again
    assert monitor.run_once() == {"1.2.3.7": "queued"}
    with engine.begin() as conn:  # 61 s on, the cut-off one's sender has not come back
        conn.execute(update(Series).where(Series.series_uid == "1.2.3.8")
                     .values(last_received_at=utcnow() - timedelta(seconds=61)))
    assert monitor.run_once() == {"1.2.3.8": "queued"}


def test_a_resend_made_only_of_repeats_ends_the_wait_of_an_aborted_transfer(
        engine: Engine, tmp_path: Path) -> None:
    """The aborted transfer had stored every instance before it ended; the sender sends the
    whole series again and each instance is a repeat. The series is complete when that
    resend has settled, not `aborted_wait` later."""
    from storage.associations import AssociationLog

    log = AssociationLog(engine)
    store = InstanceStore(engine, FileStore(tmp_path))
    series = "1.2.3.10"

    def send(pk: int, n: int) -> None:
        for i in range(1, n + 1):
            store.store(InstanceMeta(sop_class_uid=CT, sop_uid=f"{series}.{i}",
                                     study_uid="1.2.3", series_uid=series,
                                     transfer_syntax_uid="1.2.840.10008.1.2.1", modality="CT",
                                     body_part="HEAD", image_type="ORIGINAL\\PRIMARY\\AXIAL"),
                        [b"x"], association_pk=pk)

    def opened() -> int:
        return log.opened(calling_ae="CT1", called_ae="NODE", peer_host="127.0.0.1",
                          peer_port=1)

    first = opened()
    send(first, 4)
    log.closed(first, state="aborted", stored=4, failed=0, duplicates=0)
    monitor = SeriesMonitor(SeriesIndex(engine), JobQueue(engine),
                            EligibilityRules(min_slices=3), settle_seconds=0,
                            aborted_wait_seconds=60)
    assert monitor.run_once() == {}  # waiting for the resend
    with engine.connect() as conn:
        before = conn.execute(select(Series.last_received_at)
                              .where(Series.series_uid == series)).scalar_one()
    again = opened()
    send(again, 4)
    log.closed(again, state="released", stored=0, failed=0, duplicates=4)
    with engine.connect() as conn:
        row = conn.execute(select(Series.last_received_at, Series.instance_count)
                           .where(Series.series_uid == series)).one()
        repeats = conn.execute(select(func.sum(Instance.duplicates))).scalar_one()
    assert row.instance_count == 4 and repeats == 4 and row.last_received_at > before
    assert monitor.run_once() == {series: "queued"}
