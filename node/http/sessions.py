"""Log-in sessions of the page and checked bearer tokens, held in the serving process.

A session is a random id in an HttpOnly cookie; the server keeps only its sha256, the token
it was opened with and its CSRF token. Both caches keep token ids, never token secrets, and
every request still reads the token's row, so a revoked token stops working at once.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass

SESSION_SECONDS = 12 * 3600  # a night shift
BEARER_SECONDS = 300  # how long a checked bearer token skips scrypt


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Session:
    token_pk: int
    csrf: str
    expires: float


class SessionStore:
    def __init__(self, seconds: float = SESSION_SECONDS) -> None:
        self.seconds = seconds
        self._by_digest: dict[str, Session] = {}
        self._lock = threading.Lock()

    def open(self, token_pk: int) -> tuple[str, Session]:
        sid = secrets.token_urlsafe(32)
        session = Session(token_pk, secrets.token_urlsafe(32), time.monotonic() + self.seconds)
        with self._lock:
            now = time.monotonic()
            self._by_digest = {k: v for k, v in self._by_digest.items() if v.expires > now}
            self._by_digest[_digest(sid)] = session
        return sid, session

    def get(self, sid: str) -> Session | None:
        with self._lock:
            session = self._by_digest.get(_digest(sid))
        if session is None or session.expires <= time.monotonic():
            return None
        return session

    def close(self, sid: str) -> None:
        with self._lock:
            self._by_digest.pop(_digest(sid), None)


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
