"""An audit of DICOM associations: who called, from where, what was stored; and the counts
of rejected associations and refused C-STOREs for /metrics (storage.node_counters)."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping

from sqlalchemy import Engine, bindparam, insert, update
from sqlalchemy.exc import SQLAlchemyError

from storage.db import DirectStatement
from storage.errors import DatabaseError
from storage.instances import fit_columns
from storage.models import Association, utcnow
from storage.node_counters import ASSOCIATIONS_REJECTED, STORES_REFUSED, NodeCounters


class AssociationLog:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.counters = NodeCounters(engine)
        # Built once: every association runs both (SQLAlchemy then compiles them once). On
        # SQLite the driver runs them itself: each is its own transaction, and the write lock
        # is not held while the association's thread waits for the interpreter lock.
        opened = insert(Association).values(
            {c.name: bindparam(c.name) for c in Association.__table__.c
             if c.name not in ("id", "ended_at")})
        self._open = opened.returning(Association.id)
        self._close = update(Association).where(Association.id == bindparam("pk")).values(
            {name: bindparam(name) for name in
             ("ended_at", "state", "stored", "failed", "duplicates")})
        sqlite = engine.dialect.name == "sqlite"
        self._direct_open = DirectStatement(engine, opened) if sqlite else None
        self._direct_close = DirectStatement(engine, self._close) if sqlite else None

    def opened(self, *, calling_ae: str, called_ae: str, peer_host: str,
               peer_port: int | None) -> int:
        values = fit_columns(Association, dict(
            calling_ae=calling_ae, called_ae=called_ae, peer_host=peer_host,
            peer_port=peer_port, started_at=utcnow(), state="open", stored=0, failed=0,
            duplicates=0,
        ))
        try:
            if self._direct_open is not None:
                pk, _count = self._direct_open.execute(values)
            else:
                with self.engine.begin() as conn:
                    pk = conn.execute(self._open, values).scalar_one()
        except (SQLAlchemyError, sqlite3.Error) as exc:  # a full disk, a database gone
            raise DatabaseError(f"recording an association failed: {_reason(exc)}") from exc
        if pk is None:
            raise DatabaseError("recording an association gave no key")
        return int(pk)

    def rejected(self, reason: str) -> None:
        """Count an association rejected before it was accepted, by `reason`.

        Raises DatabaseError when the count cannot be written (a full disk, a database gone)."""
        self._count(ASSOCIATIONS_REJECTED, {reason: 1})

    def refused(self, by_status: Mapping[int, int]) -> None:
        """Count the C-STOREs an association had refused, by DIMSE status (DatabaseError as
        `rejected`)."""
        self._count(STORES_REFUSED, {f"0x{code:04X}": n for code, n in by_status.items()})

    def _count(self, name: str, by_label: Mapping[str, int]) -> None:
        try:
            self.counters.add(name, by_label)
        except (SQLAlchemyError, sqlite3.Error) as exc:
            raise DatabaseError(f"counting {name} failed: {_reason(exc)}") from exc

    def closed(self, pk: int, *, state: str, stored: int, failed: int, duplicates: int) -> None:
        values = dict(pk=pk, ended_at=utcnow(), state=state, stored=stored, failed=failed,
                      duplicates=duplicates)
        try:
            if self._direct_close is not None:
                self._direct_close.execute(values)
            else:
                with self.engine.begin() as conn:
                    conn.execute(self._close, values)
        except (SQLAlchemyError, sqlite3.Error) as exc:
            raise DatabaseError(f"recording the end of association {pk} failed: "
                                f"{_reason(exc)}") from exc

    def close_left_open(self) -> int:
        """Mark the associations a stopped node left open as aborted (their receiving processes
        are gone): for start-up. Returns how many."""
        with self.engine.begin() as conn:
            return int(conn.execute(update(Association).where(Association.state == "open")
                                    .values(state="aborted", ended_at=utcnow())).rowcount)


def _reason(exc: Exception) -> str:
    """The driver's words for a failed write, on one line (e.g. 'database or disk is full')."""
    orig = getattr(exc, "orig", None) or exc
    return f"{type(orig).__name__}: {str(orig).strip().splitlines()[0] if str(orig) else ''}"
