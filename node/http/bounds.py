"""Bounds of the integers the API passes to SQL, so a larger number is refused with the
documented 4xx before it reaches the database driver (which raises OverflowError on
SQLite, "integer out of range" on PostgreSQL, both a 500).

What the columns hold: the index's ids are `Integer` columns (storage.models), a signed
32-bit `integer` on PostgreSQL (SQLite keeps up to 64 bits), and SQLAlchemy binds a value
compared with one as `::INTEGER`: a row id, and each integer of a worklist cursor (a study
id, a priority rank), is 1..2^31-1. A QIDO offset is no column: PostgreSQL's OFFSET takes a
BIGINT and SQLite's an INTEGER, so 0..2^63-1."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Annotated, Any

from pydantic import Field

INT64_MAX = 2**63 - 1
INT32_MAX = 2**31 - 1
INT32_MIN = -(2**31)

RowId = Annotated[int, Field(ge=1, le=INT32_MAX, description="a row id (1 to 2^31-1)")]


def row_id(text: str) -> int | None:
    """A decimal row id in 1..2^31-1, or None when `text` is not one."""
    if not text.isdigit() or len(text) > 10:
        return None
    value = int(text)
    return value if 1 <= value <= INT32_MAX else None


def cursor_in_range(cursor: str) -> bool:
    """Whether every number in a worklist cursor (URL-safe base64 of a JSON list) fits a
    signed 32-bit integer (the columns it is compared with) or is a finite float; False
    for one that does not. A cursor that is
    not base64 JSON at all is left to storage.worklist_pages, which refuses it."""
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError):
        return True
    return not isinstance(values, list) or all(_fits(v) for v in values)


def _fits(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return True
    if isinstance(value, float):
        return abs(value) <= 1e300
    return INT32_MIN <= value <= INT32_MAX
