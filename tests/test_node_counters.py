"""What the HTTP side reads from SQL about other processes, on SQLite and PostgreSQL alike:
counters the receivers keep, workers' heartbeats, histograms counted in the database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, insert, update

from storage.counts import JOB_BUCKETS, histogram, seconds_between
from storage.db import reader
from storage.models import Job, WorkerBeat
from storage.node_counters import NodeCounters
from storage.worker_beats import STALE_SECONDS, WorkerBeats


def test_counters_add_up_across_writers(engine: Engine) -> None:
    first, second = NodeCounters(engine), NodeCounters(engine)  # two receiving processes
    first.add("associations_rejected", {"calling_ae_not_recognized": 1})
    second.add("associations_rejected", {"calling_ae_not_recognized": 2,
                                         "local_limit_exceeded": 1})
    first.add("stores_refused", {"0xA700": 0})  # nothing to count: no row
    assert first.read() == {"associations_rejected": {"calling_ae_not_recognized": 3,
                                                      "local_limit_exceeded": 1}}


def test_job_durations_are_counted_in_the_database(engine: Engine) -> None:
    t0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    with engine.begin() as conn:
        for n, seconds in enumerate((0.5, 7.0, 7.5, 900.0)):
            conn.execute(insert(Job).values(kind="triage", queueing_lock=f"j{n}", status="done",
                                            started_at=t0,
                                            finished_at=t0 + timedelta(seconds=seconds)))
        conn.execute(insert(Job).values(kind="triage", queueing_lock="q", status="queued"))
    with reader(engine).connect() as conn:
        h = histogram(conn, seconds_between(engine, Job.started_at, Job.finished_at),
                      JOB_BUCKETS, Job.status == "done")
    assert h.count == 4 and abs(h.sum - 915.0) < 1e-3
    assert dict(h.buckets)[1.0] == 1 and dict(h.buckets)[10.0] == 3
    assert dict(h.buckets)[600.0] == 3  # 900 s only under +Inf


def test_heartbeats_say_who_is_alive(engine: Engine) -> None:
    beats = WorkerBeats(engine)
    assert not beats.liveness().alive
    beats.beat("a:1:1")
    beats.beat("a:1:1")  # again: the same row
    beats.beat("b:2:1")
    live = beats.liveness()
    assert (live.alive, live.beating) == (True, 2) and live.last_beat_at is not None
    with engine.begin() as conn:
        conn.execute(update(WorkerBeat).where(WorkerBeat.worker == "b:2:1").values(
            seen_at=datetime.now(UTC) - timedelta(seconds=STALE_SECONDS + 5)))
    assert beats.liveness().beating == 1
    beats.gone("a:1:1")
    assert not beats.liveness().alive
