"""Reading a key of a JSON object kept in a Text column, on SQLite and on PostgreSQL alike
(the result tables keep {"any": 0.97, ...} as text; see storage.models.TriageResult)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Engine, Float, cast, func
from sqlalchemy.dialects.postgresql import JSONB


def json_number(engine: Engine, column: Any, key: str) -> ColumnElement[Any]:
    if engine.dialect.name == "postgresql":
        return cast(cast(column, JSONB)[key].astext, Float)
    return func.json_extract(column, f"$.{key}")


def json_true(engine: Engine, column: Any, key: str) -> ColumnElement[bool]:
    if engine.dialect.name == "postgresql":
        return cast(column, JSONB)[key].astext == "true"
    return func.json_extract(column, f"$.{key}") == 1
