"""The admin's view of the work in flight: jobs and outbox deliveries not done, series still
receiving, and the two ways to try again (mercure's queue page is the model)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, select, update

from storage.db import reader
from storage.models import (
    Delivery,
    DeliveryStatus,
    Job,
    JobStatus,
    Series,
    SeriesStatus,
    Study,
    utcnow,
)


@dataclass(frozen=True)
class JobRow:
    id: int
    status: str
    attempts: int
    series_uid: str
    study_uid: str
    worker: str
    last_error: str
    created_at: datetime
    started_at: datetime | None


@dataclass(frozen=True)
class DeliveryRow:
    id: int
    sop_uid: str
    destination: str
    status: str
    attempts: int
    next_attempt_at: datetime
    last_error: str


@dataclass(frozen=True)
class ReceivingRow:
    series_uid: str
    study_uid: str
    instances: int
    last_received_at: datetime


class QueueView:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def jobs(self, limit: int = 200) -> list[JobRow]:
        """Queued, running and failed jobs, the newest first."""
        query = (select(Job.id, Job.status, Job.attempts, Series.series_uid, Study.study_uid,
                        Job.worker, Job.last_error, Job.created_at, Job.started_at)
                 .join(Series, Series.id == Job.series_pk).join(Study, Study.id == Series.study_pk)
                 .where(Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.FAILED]))
                 .order_by(Job.id.desc()).limit(limit))
        with reader(self.engine).connect() as conn:
            return [JobRow(r[0], str(r[1]), *r[2:]) for r in conn.execute(query)]

    def deliveries(self, limit: int = 200) -> list[DeliveryRow]:
        """Pending and failed deliveries, the newest first."""
        query = (select(Delivery.id, Delivery.sop_uid, Delivery.destination, Delivery.status,
                        Delivery.attempts, Delivery.next_attempt_at, Delivery.last_error)
                 .where(Delivery.status.in_([DeliveryStatus.PENDING, DeliveryStatus.FAILED]))
                 .order_by(Delivery.id.desc()).limit(limit))
        with reader(self.engine).connect() as conn:
            return [DeliveryRow(r[0], r[1], r[2], str(r[3]), *r[4:]) for r in conn.execute(query)]

    def receiving(self, limit: int = 200) -> list[ReceivingRow]:
        query = (select(Series.series_uid, Study.study_uid, Series.instance_count,
                        Series.last_received_at)
                 .join(Study, Study.id == Series.study_pk)
                 .where(Series.status == SeriesStatus.RECEIVING)
                 .order_by(Series.last_received_at).limit(limit))
        with reader(self.engine).connect() as conn:
            return [ReceivingRow(*r) for r in conn.execute(query)]

    def has_series(self, series_uid: str) -> bool:
        with reader(self.engine).connect() as conn:
            return conn.execute(select(Series.id).where(
                Series.series_uid == series_uid)).first() is not None

    def has_delivery(self, pk: int) -> bool:
        with reader(self.engine).connect() as conn:
            return conn.execute(select(Delivery.id).where(Delivery.id == pk)).first() is not None

    def retry_series(self, series_uid: str) -> bool:
        """A failed series goes back to receiving: the scheduler decides it again at its next
        look (eligibility, then a new job). False when it is not failed."""
        with self.engine.begin() as conn:
            done = conn.execute(update(Series).where(
                Series.series_uid == series_uid, Series.status == SeriesStatus.FAILED,
            ).values(status=SeriesStatus.RECEIVING, status_reason="")).rowcount
        return done == 1

    def retry_delivery(self, pk: int) -> bool:
        """A failed delivery is tried again at once, with its attempts counted afresh."""
        with self.engine.begin() as conn:
            done = conn.execute(update(Delivery).where(
                Delivery.id == pk, Delivery.status == DeliveryStatus.FAILED,
            ).values(status=DeliveryStatus.PENDING, attempts=0, next_attempt_at=utcnow(),
                     last_error="")).rowcount
        return done == 1
