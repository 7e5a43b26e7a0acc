"""An audit of DICOM associations: who called, from where, what was stored."""

from __future__ import annotations

from sqlalchemy import Engine, insert, update

from storage.instances import fit_columns
from storage.models import Association, utcnow


class AssociationLog:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def opened(self, *, calling_ae: str, called_ae: str, peer_host: str,
               peer_port: int | None) -> int:
        with self.engine.begin() as conn:
            pk = conn.execute(insert(Association).values(**fit_columns(Association, dict(
                calling_ae=calling_ae, called_ae=called_ae, peer_host=peer_host,
                peer_port=peer_port, started_at=utcnow(), state="open", stored=0, failed=0,
                duplicates=0,
            ))).returning(Association.id)).scalar_one()
        return int(pk)

    def closed(self, pk: int, *, state: str, stored: int, failed: int, duplicates: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(Association).where(Association.id == pk).values(
                ended_at=utcnow(), state=state, stored=stored, failed=failed,
                duplicates=duplicates))
