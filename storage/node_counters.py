"""Counts kept in SQL for /metrics by the processes that see the events: the receiving
processes count rejected associations (by reason) and refused C-STOREs (by status).

The HTTP server runs in another process (and a stand-alone worker on another host), so an
in-memory counter there would see none of it; the database is the one place they all share,
and its counts survive a restart (Prometheus counters only ever grow here).
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import Engine, select
from sqlalchemy.dialects import postgresql, sqlite

from storage.db import reader
from storage.models import NodeCounter

ASSOCIATIONS_REJECTED = "associations_rejected"  # label: the reason (A-ASSOCIATE-RJ)
STORES_REFUSED = "stores_refused"  # label: the DIMSE status, e.g. "0xA700"


class NodeCounters:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._insert = sqlite.insert if engine.dialect.name == "sqlite" else postgresql.insert

    def add(self, name: str, by_label: Mapping[str, int]) -> None:
        """Add each `by_label` count to counter `name`, in one transaction."""
        rows = [{"name": name[:64], "label": label[:64], "value": int(n)}
                for label, n in by_label.items() if n]
        if not rows:
            return
        stmt = self._insert(NodeCounter)
        stmt = stmt.on_conflict_do_update(
            index_elements=[NodeCounter.name, NodeCounter.label],
            set_={"value": NodeCounter.value + stmt.excluded.value})
        with self.engine.begin() as conn:
            for row in rows:
                conn.execute(stmt, row)

    def read(self) -> dict[str, dict[str, int]]:
        """Every counter: name -> label -> value."""
        out: dict[str, dict[str, int]] = {}
        with reader(self.engine).connect() as conn:
            for name, label, value in conn.execute(select(
                    NodeCounter.name, NodeCounter.label, NodeCounter.value)):
                out.setdefault(str(name), {})[str(label)] = int(value)
        return out
