"""Log-in sessions of the page (kept in SQL by `storage.web_sessions`, so they survive a
restart) and checked bearer tokens (held in this process).

A session is a random id in an HttpOnly cookie; the database keeps only its sha256. Its CSRF
token is derived from the id (HMAC-SHA256 keyed by it), so only the browser that holds the
cookie and the server it sends it to can know it, and nothing more needs to be stored. The
bearer cache keeps token ids, never token secrets, and every request still reads the token's
row, so a revoked token stops working at once.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine

from storage.web_sessions import WebSessions

SESSION_SECONDS = 12 * 3600  # a night shift
BEARER_SECONDS = 300  # how long a checked bearer token skips scrypt


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def csrf_for(sid: str) -> str:
    """The CSRF token of session `sid`: HMAC-SHA256 of a fixed text keyed by the id."""
    return hmac.new(sid.encode(), b"ichtriage csrf", hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Session:
    token_pk: int
    csrf: str
    expires_at: datetime


class SessionStore:
    """The page's sessions, in the database (`storage.web_sessions`)."""

    def __init__(self, engine: Engine, seconds: float = SESSION_SECONDS) -> None:
        self.seconds = seconds
        self._rows = WebSessions(engine, seconds=seconds)

    def open(self, token_pk: int, role: str) -> tuple[str, Session]:
        sid, row = self._rows.open(token_pk, role)
        return sid, Session(token_pk, csrf_for(sid), row.expires_at)

    def get(self, sid: str) -> Session | None:
        """The live session of cookie value `sid` (its token not revoked), else None."""
        if not sid or len(sid) > 200:
            return None
        row = self._rows.get(sid)
        return Session(row.token_pk, csrf_for(sid), row.expires_at) if row else None

    def close(self, sid: str) -> None:
        self._rows.close(sid)


class BearerCache:
    """sha256 of a bearer token -> its id, for tokens whose scrypt check passed lately."""

    def __init__(self, seconds: float = BEARER_SECONDS) -> None:
        self.seconds = seconds
        self._known: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()

    def get(self, token: str) -> int | None:
        with self._lock:
            hit = self._known.get(_digest(token))
        return hit[0] if hit is not None and hit[1] > time.monotonic() else None

    def put(self, token: str, pk: int) -> None:
        with self._lock:
            if len(self._known) > 10_000:
                self._known.clear()
            self._known[_digest(token)] = (pk, time.monotonic() + self.seconds)
