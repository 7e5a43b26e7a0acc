"""The audit trail of the HTTP side and the admin commands: who, when, what, which study
(in the spirit of IHE ATNA, RFC 3881). Never a patient's name or ID: studies by UID."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, insert, select

from storage.db import reader
from storage.models import AuditEvent, utcnow


@dataclass(frozen=True)
class AuditRecord:
    at: datetime
    actor: str
    token_pk: int | None
    action: str
    study_uid: str
    detail: str
    client: str


class AuditLog:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def record(self, action: str, *, actor: str, token_pk: int | None = None,
               study_uid: str = "", detail: str = "", client: str = "") -> None:
        with self.engine.begin() as conn:
            conn.execute(insert(AuditEvent).values(
                at=utcnow(), actor=actor[:64], token_pk=token_pk, action=action[:32],
                study_uid=study_uid[:64], detail=detail[:200], client=client[:64]))

    def recent(self, *, limit: int = 100, action: str | None = None) -> list[AuditRecord]:
        query = select(AuditEvent.__table__).order_by(AuditEvent.id.desc()).limit(limit)
        if action is not None:
            query = query.where(AuditEvent.action == action)
        with reader(self.engine).connect() as conn:
            return [AuditRecord(r.at, r.actor, r.token_pk, r.action, r.study_uid, r.detail,
                                r.client) for r in conn.execute(query)]
