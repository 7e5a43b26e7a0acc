"""One retraining at a time, across processes and restarts.

The lock is a row: `start` inserts a running one, and a partial unique index (`status =
'running'`, see `storage.models.Retraining`) refuses a second. A run whose process ended
without finishing (a crash, a SIGKILL, a reboot) would hold the lock for ever: `start` first
marks the running row failed when the caller's `alive(owner)` says its owner is gone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from storage.db import reader
from storage.errors import StorageError
from storage.models import JobStatus, Retraining, utcnow


class RetrainingBusyError(StorageError):
    """Another retraining is running; nothing was started."""


@dataclass(frozen=True)
class RetrainingRun:
    pk: int
    status: str
    owner: str
    started_at: datetime
    finished_at: datetime | None
    candidate: str
    outcome: str


class RetrainingLog:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def start(self, owner: str, *, alive: Callable[[str], bool]) -> int:
        """The id of a new running row; RetrainingBusyError while another one runs."""
        with self.engine.begin() as conn:
            running = conn.execute(select(Retraining.id, Retraining.owner).where(
                Retraining.status == JobStatus.RUNNING)).first()
            if running is not None and not alive(running.owner):
                conn.execute(update(Retraining).where(Retraining.id == running.id).values(
                    status=JobStatus.FAILED, finished_at=utcnow(),
                    outcome=f"its process {running.owner} ended before it finished"))
        try:
            with self.engine.begin() as conn:
                return int(conn.execute(insert(Retraining).values(
                    status=JobStatus.RUNNING, owner=owner[:128], started_at=utcnow(),
                    candidate="", outcome="").returning(Retraining.id)).scalar_one())
        except IntegrityError as exc:
            current = self.running()
            since = f" by {current.owner} since {current.started_at:%Y-%m-%d %H:%M:%S} UTC" \
                if current else ""
            raise RetrainingBusyError(f"a retraining is running{since}; one at a time") from exc

    def finish(self, pk: int, *, ok: bool, candidate: str = "", outcome: str = "") -> None:
        with self.engine.begin() as conn:
            conn.execute(update(Retraining).where(
                Retraining.id == pk, Retraining.status == JobStatus.RUNNING).values(
                status=JobStatus.DONE if ok else JobStatus.FAILED, finished_at=utcnow(),
                candidate=candidate[:64], outcome=outcome))

    def last_done_start(self) -> datetime | None:
        """When the newest retraining that ended well started (None: none did). Feedback given
        since then is new to the models: a run exports the labels when it starts, and a run
        that failed used nothing, so it resets nothing."""
        with reader(self.engine).connect() as conn:
            return conn.execute(select(func.max(Retraining.started_at)).where(
                Retraining.status == JobStatus.DONE)).scalar_one()

    def running(self) -> RetrainingRun | None:
        runs = [r for r in self.runs() if r.status == JobStatus.RUNNING.value]
        return runs[0] if runs else None

    def runs(self) -> list[RetrainingRun]:
        with reader(self.engine).connect() as conn:
            rows = conn.execute(select(Retraining.id, Retraining.status, Retraining.owner,
                                       Retraining.started_at, Retraining.finished_at,
                                       Retraining.candidate, Retraining.outcome)
                                .order_by(Retraining.id)).all()
        return [RetrainingRun(r[0], str(JobStatus(r[1]).value), *r[2:]) for r in rows]
