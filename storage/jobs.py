"""The job queue: a row per unit of work, claimed under a lease.

Modelled on procrastinate: a job has a status (queued / running / done / failed), a count of
attempts, a lease that expires (a worker that dies mid-job loses it, and another worker takes
the job up), and a queueing lock so one series is queued once. On PostgreSQL a claim is
`SELECT ... FOR UPDATE SKIP LOCKED`, so many workers on many hosts share one queue; on SQLite
the claim runs under `BEGIN IMMEDIATE`, which serializes claimers.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import ColumnElement, Connection, Engine, and_, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from storage.models import Job, JobStatus, utcnow
from storage.retry import RetryPolicy

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClaimedJob:
    id: int
    kind: str
    queueing_lock: str
    series_pk: int | None
    series_revision: int
    attempts: int
    worker: str


class JobQueue:
    def __init__(self, engine: Engine, *, lease_seconds: float = 30.0,
                 retry: RetryPolicy | None = None) -> None:
        if lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be > 0, got {lease_seconds}")
        self.engine = engine
        self.lease = timedelta(seconds=lease_seconds)
        self.retry = retry or RetryPolicy()
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert

    def enqueue(self, conn: Connection, *, kind: str, queueing_lock: str,
                series_pk: int | None = None, series_revision: int = 0) -> int | None:
        """Queue a job inside the caller's transaction; None when one with this lock is queued."""
        stmt = self._insert(Job).values(
            kind=kind, queueing_lock=queueing_lock, series_pk=series_pk,
            series_revision=series_revision, status=JobStatus.QUEUED, attempts=0,
            run_after=utcnow(), worker="", last_error="", created_at=utcnow(),
        ).on_conflict_do_nothing(
            index_elements=["queueing_lock"], index_where=text("status = 'queued'"),
        ).returning(Job.id)
        job_id = conn.execute(stmt).scalar()
        if job_id is None:
            # The lock is taken: refresh the queued job's revision so it reads the newest state.
            conn.execute(update(Job).where(
                Job.queueing_lock == queueing_lock, Job.status == JobStatus.QUEUED,
            ).values(series_revision=series_revision))
        return job_id

    def claim(self, worker: str, *, kinds: tuple[str, ...] = ("triage",)) -> ClaimedJob | None:
        """Take the oldest runnable job: queued and due, or running with an expired lease."""
        now = utcnow()
        runnable = and_(Job.kind.in_(kinds), or_(
            and_(Job.status == JobStatus.QUEUED, Job.run_after <= now),
            and_(Job.status == JobStatus.RUNNING, Job.lease_expires_at < now),
        ))
        query = select(Job).where(runnable).order_by(Job.run_after, Job.id).limit(1)
        if self.engine.dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        with self.engine.begin() as conn:
            while True:
                row = conn.execute(query).mappings().first()
                if row is None:
                    return None
                if row["status"] != JobStatus.RUNNING:
                    break
                if row["attempts"] < self.retry.max_attempts:
                    logger.warning("job %s: lease of worker %s expired; reclaimed by %s",
                                   row["id"], row["worker"], worker)
                    break
                # Its worker died on every try: the job itself is the likely cause.
                conn.execute(update(Job).where(Job.id == row["id"]).values(
                    status=JobStatus.FAILED, finished_at=now, lease_expires_at=None,
                    last_error=f"lease expired on each of {row['attempts']} tries "
                               f"(worker died or hung); last worker {row['worker']}"))
                logger.error("job %s failed: lease expired on each of %d tries",
                             row["id"], row["attempts"])
            conn.execute(update(Job).where(Job.id == row["id"]).values(
                status=JobStatus.RUNNING, attempts=row["attempts"] + 1, worker=worker,
                lease_expires_at=now + self.lease, started_at=now,
            ))
        return ClaimedJob(id=row["id"], kind=row["kind"], queueing_lock=row["queueing_lock"],
                          series_pk=row["series_pk"], series_revision=row["series_revision"],
                          attempts=row["attempts"] + 1, worker=worker)

    def heartbeat(self, job: ClaimedJob) -> bool:
        """Extend the lease; False when the job is no longer this worker's."""
        with self.engine.begin() as conn:
            return conn.execute(update(Job).where(self._owned(job)).values(
                lease_expires_at=utcnow() + self.lease)).rowcount == 1

    @contextmanager
    def kept_alive(self, job: ClaimedJob) -> Iterator[None]:
        """Renew `job`'s lease every third of the lease while the block runs, so a short lease
        (a dead worker's job is taken over soon) never runs out under a live one. A database
        error in a renewal is logged and the next one tried."""
        done = threading.Event()

        def renew() -> None:
            while not done.wait(self.lease.total_seconds() / 3):
                try:
                    if not self.heartbeat(job):
                        logger.warning("job %s: lease lost to another worker", job.id)
                        return
                except SQLAlchemyError as exc:
                    logger.warning("job %s: lease not renewed: %s", job.id, exc)

        thread = threading.Thread(target=renew, name=f"lease-{job.id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def complete(self, job: ClaimedJob, conn: Connection | None = None) -> bool:
        """Mark done (inside `conn`'s transaction when given); False when the lease was lost."""
        stmt = update(Job).where(self._owned(job)).values(
            status=JobStatus.DONE, finished_at=utcnow(), lease_expires_at=None, last_error="")
        if conn is not None:
            return conn.execute(stmt).rowcount == 1
        with self.engine.begin() as own:
            return own.execute(stmt).rowcount == 1

    def fail(self, job: ClaimedJob, error: str) -> JobStatus:
        """Record a failed try: queued again after the policy's backoff, or failed for good."""
        now = utcnow()
        with self.engine.begin() as conn:
            if job.attempts >= self.retry.max_attempts:
                final = JobStatus.FAILED
            else:
                other = conn.execute(select(Job.id).where(
                    Job.queueing_lock == job.queueing_lock, Job.status == JobStatus.QUEUED,
                )).scalar()
                final = JobStatus.FAILED if other is not None else JobStatus.QUEUED
                if other is not None:
                    error = f"{error} (retry superseded by queued job {other})"
            values: dict[str, object] = {"status": final, "last_error": error[:4000],
                                         "lease_expires_at": None}
            if final == JobStatus.QUEUED:
                values["run_after"] = now + self.retry.delay(job.attempts)
            else:
                values["finished_at"] = now
            conn.execute(update(Job).where(self._owned(job)).values(**values))
        logger.warning("job %s (%s) try %d failed: %s -> %s", job.id, job.queueing_lock,
                       job.attempts, error, final.value)
        return final

    def release(self, job: ClaimedJob, reason: str) -> bool:
        """Queue `job` again at once, this try not counted: it was cut short by something
        that is not the job's fault (the database went away mid-job). A job queued again
        meanwhile for the same series supersedes it (it ends failed, saying so). False when
        the job is no longer this worker's: its lease ran out and another worker has it."""
        now = utcnow()
        with self.engine.begin() as conn:
            other = conn.execute(select(Job.id).where(
                Job.queueing_lock == job.queueing_lock, Job.status == JobStatus.QUEUED,
            )).scalar()
            values: dict[str, object] = {"lease_expires_at": None, "last_error": reason[:4000]}
            if other is None:
                values |= {"status": JobStatus.QUEUED, "run_after": now,
                           "attempts": job.attempts - 1}
            else:
                values |= {"status": JobStatus.FAILED, "finished_at": now,
                           "last_error": f"{reason} (superseded by queued job {other})"}
            released = conn.execute(update(Job).where(self._owned(job))
                                     .values(**values)).rowcount == 1
        if released:
            logger.warning("job %s (%s) queued again: %s", job.id, job.queueing_lock, reason)
        return released

    def reclaim_dead(self, host: str, alive: Callable[[int], bool]) -> list[int]:
        """Queue again, at once, the running jobs of workers on `host` whose process is gone
        (`alive(pid)` is False): a node restarted after a crash need not wait for their
        leases to expire. A job already tried `retry.max_attempts` times fails instead (it may
        be what crashed the node). Returns the ids of the jobs reclaimed or failed."""
        now = utcnow()
        done: list[int] = []
        with self.engine.begin() as conn:
            running = conn.execute(select(Job.id, Job.worker, Job.attempts, Job.queueing_lock)
                                   .where(Job.status == JobStatus.RUNNING)).all()
            for job_id, worker, attempts, lock in running:
                process = worker_process(worker)
                if process is None or process[0] != host or alive(process[1]):
                    continue
                queued = conn.execute(select(Job.id).where(
                    Job.queueing_lock == lock, Job.status == JobStatus.QUEUED)).scalar()
                if queued is not None:  # the series was queued again meanwhile: that one runs
                    values: dict[str, object] = {
                        "status": JobStatus.FAILED, "finished_at": now,
                        "last_error": f"its worker {worker} ended mid-job; superseded by "
                                      f"queued job {queued}"}
                elif attempts >= self.retry.max_attempts:
                    values = {
                        "status": JobStatus.FAILED, "finished_at": now,
                        "last_error": f"its worker's process ended on each of {attempts} tries "
                                      f"(last {worker})"}
                else:
                    values = {"status": JobStatus.QUEUED, "run_after": now,
                              "last_error": f"its worker {worker} ended mid-job; queued again"}
                conn.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.RUNNING,
                                               Job.worker == worker)
                             .values(lease_expires_at=None, **values))
                done.append(job_id)
        return done

    @staticmethod
    def _owned(job: ClaimedJob) -> ColumnElement[bool]:
        return and_(Job.id == job.id, Job.status == JobStatus.RUNNING, Job.worker == job.worker,
                    Job.attempts == job.attempts)


def worker_process(worker: str) -> tuple[str, int] | None:
    """(host, pid) of a worker named "host:pid:thread" (node.triage.worker's names); None for
    a name of another form."""
    parts = worker.split(":")
    if len(parts) < 3 or not parts[-2].isdigit() or not parts[0]:
        return None
    return ":".join(parts[:-2]), int(parts[-2])
