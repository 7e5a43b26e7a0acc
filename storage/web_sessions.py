"""The page's log-in sessions, kept in SQL so that they survive a restart of the node and are
shared by every process that serves HTTP.

A session is a random id the browser holds in an HttpOnly cookie; the table keeps only its
sha256, the token it was opened with (and that token's role), when it was opened and when it
expires. A session ends at its expiry, at log-out, or when its token is revoked
(`storage.tokens.TokenStore.revoke` deletes the token's sessions in the same transaction).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, delete, insert, select

from storage.db import reader
from storage.models import ApiToken, WebSession, utcnow


def sid_digest(sid: str) -> str:
    """Hex sha256 of a session id: what the table keeps (the id itself is 256 random bits,
    so a plain hash suffices; no salt or slow hash is needed)."""
    return hashlib.sha256(sid.encode()).hexdigest()


@dataclass(frozen=True)
class StoredSession:
    pk: int
    token_pk: int
    role: str
    expires_at: datetime


class WebSessions:
    def __init__(self, engine: Engine, *, seconds: float) -> None:
        if seconds <= 0:
            raise ValueError(f"seconds: must be > 0, got {seconds}")
        self.engine = engine
        self.seconds = seconds

    def open(self, token_pk: int, role: str) -> tuple[str, StoredSession]:
        """A new session for the token `token_pk`: (its id, for the cookie only; its row).
        Expired sessions are deleted on the way."""
        sid = secrets.token_urlsafe(32)
        now = utcnow()
        expires = now + timedelta(seconds=self.seconds)
        with self.engine.begin() as conn:
            conn.execute(delete(WebSession).where(WebSession.expires_at <= now))
            pk = conn.execute(insert(WebSession).values(
                sid_sha256=sid_digest(sid), token_pk=token_pk, role=role[:16], created_at=now,
                expires_at=expires).returning(WebSession.id)).scalar_one()
        return sid, StoredSession(int(pk), token_pk, role, expires)

    def get(self, sid: str) -> StoredSession | None:
        """The live session `sid` names: not expired, its token not revoked; else None."""
        query = (select(WebSession.id, WebSession.token_pk, WebSession.role,
                        WebSession.expires_at)
                 .join(ApiToken, ApiToken.id == WebSession.token_pk)
                 .where(WebSession.sid_sha256 == sid_digest(sid),
                        WebSession.expires_at > utcnow(), ApiToken.revoked_at.is_(None)))
        with reader(self.engine).connect() as conn:
            row = conn.execute(query).first()
        return StoredSession(int(row[0]), int(row[1]), str(row[2]), row[3]) if row else None

    def close(self, sid: str) -> bool:
        """End session `sid` (log-out); False when there was none."""
        with self.engine.begin() as conn:
            done = conn.execute(delete(WebSession).where(
                WebSession.sid_sha256 == sid_digest(sid))).rowcount
        return done == 1
