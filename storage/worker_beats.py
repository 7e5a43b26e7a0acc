"""Triage workers' heartbeats: how /healthz knows a worker is alive, wherever it runs.

Each worker thread (inside `ichtriage serve`, or a stand-alone `ichtriage worker` on another
host sharing the database) updates its row at least every `BEAT_SECONDS` while it polls the
queue, and deletes it when it stops. A worker inside a long job does not poll: its job's
lease, renewed every third of the lease by `JobQueue.kept_alive`, shows it alive instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, case, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite

from storage.db import reader
from storage.models import Job, JobStatus, WorkerBeat, utcnow

BEAT_SECONDS = 10.0
# A beat older than this is a worker that is gone (killed, hung, its host down).
STALE_SECONDS = 3 * BEAT_SECONDS
# Rows of workers killed without a word are deleted once this old.
FORGET_AFTER = timedelta(days=1)


@dataclass(frozen=True)
class Liveness:
    beating: int  # workers whose last beat is fresh
    leased: int  # running jobs whose lease has not expired
    last_beat_at: datetime | None  # the newest beat of any worker, fresh or not

    @property
    def alive(self) -> bool:
        return self.beating > 0 or self.leased > 0


class WorkerBeats:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def beat(self, worker: str) -> None:
        """Worker `worker` (host:pid:thread) is alive now. Rows of workers long gone (killed
        without deleting theirs) are deleted on the way."""
        now = utcnow()
        dialect = sqlite if self.engine.dialect.name == "sqlite" else postgresql
        stmt = dialect.insert(WorkerBeat).values(worker=worker[:128], started_at=now,
                                                 seen_at=now)
        stmt = stmt.on_conflict_do_update(index_elements=[WorkerBeat.worker],
                                          set_={"seen_at": now})
        with self.engine.begin() as conn:
            conn.execute(stmt)
            conn.execute(delete(WorkerBeat).where(WorkerBeat.seen_at < now - FORGET_AFTER))

    def gone(self, worker: str) -> None:
        """Worker `worker` stopped (its row is deleted)."""
        with self.engine.begin() as conn:
            conn.execute(delete(WorkerBeat).where(WorkerBeat.worker == worker[:128]))

    def liveness(self, stale_seconds: float = STALE_SECONDS) -> Liveness:
        now = utcnow()
        with reader(self.engine).connect() as conn:
            fresh = WorkerBeat.seen_at > now - timedelta(seconds=stale_seconds)
            beating, last = conn.execute(select(
                func.coalesce(func.sum(case((fresh, 1), else_=0)), 0),
                func.max(WorkerBeat.seen_at))).one()
            leased = conn.execute(select(func.count(Job.id)).where(
                Job.status == JobStatus.RUNNING, Job.lease_expires_at > now)).scalar_one()
        return Liveness(int(beating or 0), int(leased or 0), last)
