"""Bounds of the integers the API passes to SQL: a row id or an offset is a signed 64-bit
integer in the index (SQLite INTEGER, PostgreSQL BIGINT), so a larger number is refused
with the documented 4xx before it reaches the database driver (which would raise
OverflowError or "integer out of range")."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Annotated, Any

from pydantic import Field

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)

RowId = Annotated[int, Field(ge=1, le=INT64_MAX, description="a row id (1 to 2^63-1)")]


def row_id(text: str) -> int | None:
    """A decimal row id in 1..2^63-1, or None when `text` is not one."""
    if not text.isdigit() or len(text) > 19:
        return None
    value = int(text)
    return value if 1 <= value <= INT64_MAX else None


def cursor_in_range(cursor: str) -> bool:
    """Whether every number in a worklist cursor (URL-safe base64 of a JSON list) fits a
    signed 64-bit integer or a finite float; False for one that does not. A cursor that is
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
    return INT64_MIN <= value <= INT64_MAX
