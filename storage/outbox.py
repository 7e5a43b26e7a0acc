"""The persistent outbox: instances to send by C-STORE, each delivery recorded.

A row per (SOP Instance UID, destination). Sending is retried with backoff while the remote
node is down or refuses; rows survive restarts, so nothing queued is forgotten.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, select, update
from sqlalchemy.dialects import postgresql, sqlite

from storage.db import reader
from storage.models import Delivery, DeliveryStatus, utcnow
from storage.retry import RetryPolicy

# A PACS down for hours: tried again for about 16 hours at the longest wait.
DELIVERY_RETRY = RetryPolicy(max_attempts=200, backoff_seconds=2.0, backoff_factor=2.0,
                             max_backoff_seconds=300.0)


@dataclass(frozen=True)
class PendingDelivery:
    id: int
    sop_uid: str
    file_path: str
    destination: str
    attempts: int


class Outbox:
    def __init__(self, engine: Engine, *, retry: RetryPolicy | None = None) -> None:
        self.engine = engine
        self.retry = retry or DELIVERY_RETRY
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert

    def add(self, conn: Connection, *, sop_uid: str, file_path: str,
            destinations: Iterable[str]) -> int:
        """Queue an instance for each destination inside the caller's transaction; how many
        were new (one already queued for a destination is left as it is)."""
        added = 0
        for destination in destinations:
            # RETURNING, not rowcount: this insert's rowcount is -1 on PostgreSQL (psycopg)
            added += conn.execute(self._insert(Delivery).values(
                sop_uid=sop_uid, file_path=file_path, destination=destination,
                status=DeliveryStatus.PENDING, attempts=0, next_attempt_at=utcnow(),
                last_error="", created_at=utcnow(),
            ).on_conflict_do_nothing(index_elements=["sop_uid", "destination"])
                .returning(Delivery.id)).scalar() is not None
        return added

    def due(self, *, limit: int = 50) -> list[PendingDelivery]:
        with reader(self.engine).connect() as conn:
            rows = conn.execute(
                select(Delivery.id, Delivery.sop_uid, Delivery.file_path, Delivery.destination,
                       Delivery.attempts)
                .where(Delivery.status == DeliveryStatus.PENDING,
                       Delivery.next_attempt_at <= utcnow())
                .order_by(Delivery.next_attempt_at, Delivery.id).limit(limit)).all()
        return [PendingDelivery(*row) for row in rows]

    def due_now(self) -> int:
        """Make every pending delivery due now, whatever its backoff: for start-up, so that a
        restart (often after the destination was mended) sends at once. Returns how many."""
        now = utcnow()
        with self.engine.begin() as conn:
            return int(conn.execute(update(Delivery).where(
                Delivery.status == DeliveryStatus.PENDING, Delivery.next_attempt_at > now,
            ).values(next_attempt_at=now)).rowcount)

    def sent(self, delivery: PendingDelivery) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(Delivery).where(Delivery.id == delivery.id).values(
                status=DeliveryStatus.SENT, attempts=delivery.attempts + 1, sent_at=utcnow(),
                last_error=""))

    def failed(self, delivery: PendingDelivery, error: str) -> DeliveryStatus:
        attempts = delivery.attempts + 1
        final = (DeliveryStatus.FAILED if attempts >= self.retry.max_attempts
                 else DeliveryStatus.PENDING)
        with self.engine.begin() as conn:
            conn.execute(update(Delivery).where(Delivery.id == delivery.id).values(
                status=final, attempts=attempts, last_error=error[:2000],
                next_attempt_at=utcnow() + self.retry.delay(attempts)))
        return final
