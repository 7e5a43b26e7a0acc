"""An audit of DICOM associations: who called, from where, what was stored."""

from __future__ import annotations

from sqlalchemy import Engine, bindparam, insert, update

from storage.instances import fit_columns
from storage.models import Association, utcnow


class AssociationLog:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # Built once: every association runs both (SQLAlchemy then compiles them once).
        self._open = insert(Association).values(
            {c.name: bindparam(c.name) for c in Association.__table__.c
             if c.name not in ("id", "ended_at")}).returning(Association.id)
        self._close = update(Association).where(Association.id == bindparam("pk")).values(
            {name: bindparam(name) for name in
             ("ended_at", "state", "stored", "failed", "duplicates")})

    def opened(self, *, calling_ae: str, called_ae: str, peer_host: str,
               peer_port: int | None) -> int:
        with self.engine.begin() as conn:
            pk = conn.execute(self._open, fit_columns(Association, dict(
                calling_ae=calling_ae, called_ae=called_ae, peer_host=peer_host,
                peer_port=peer_port, started_at=utcnow(), state="open", stored=0, failed=0,
                duplicates=0,
            ))).scalar_one()
        return int(pk)

    def closed(self, pk: int, *, state: str, stored: int, failed: int, duplicates: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(self._close, dict(pk=pk, ended_at=utcnow(), state=state,
                                           stored=stored, failed=failed,
                                           duplicates=duplicates))
