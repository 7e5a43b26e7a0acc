"""The matching types of PS3.4 C.2.2.2, one function each: a key's values to a SQL condition.

Every value is a bound parameter; the C-FIND wildcards become a pattern in which SQL's own
wildcard characters are literal (`wildcard_pattern`). See docs/query-retrieve.md.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from enum import StrEnum
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import aliased
from sqlalchemy.sql.elements import ColumnElement

from storage.errors import StorageError
from storage.models import Series, Study


class Matching(StrEnum):
    """How a key's value is matched (PS3.4 C.2.2.2)."""

    TEXT = "text"  # single value, wildcard, a list of values; case-sensitive
    PERSON_NAME = "person_name"  # as TEXT, on the folded name (storage.person_names)
    UID = "uid"  # single value, list of UIDs (C.2.2.2.2); no wildcard
    DATE = "date"  # single value, range (C.2.2.2.5)
    TIME = "time"
    NUMBER = "number"  # IS: single value
    MODALITIES = "modalities"  # ModalitiesInStudy: a series of one of the listed modalities
    RETURN_ONLY = "return_only"  # returned, never matched


class QueryError(StorageError):
    """An identifier the index cannot answer; `keyword` names the key at fault."""

    def __init__(self, message: str, keyword: str = "") -> None:
        super().__init__(message)
        self.keyword = keyword


class IdentifierError(QueryError):
    """The identifier does not fit the information model: no or an unknown level, a key of a
    level below the query level (PS3.4 C.4.1.2.1; answered 0xA900)."""


class MatchingValueError(QueryError):
    """A key's value cannot be matched as its VR says: a wildcard in a UID, a date that is
    not YYYYMMDD, a number that is not one (answered 0xC000, unable to process)."""



_DATE = re.compile(r"\d{8}")
_TIME = re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?")


def _has_wildcard(value: str) -> bool:
    return "*" in value or "?" in value


def wildcard_pattern(value: str, dialect: str) -> str:
    """`value`'s C-FIND wildcards ('*' any run, '?' one character; PS3.4 C.2.2.2.4) as a
    pattern for SQLite GLOB (case-sensitive) or PostgreSQL LIKE ... ESCAPE '\\'; every other
    character is matched literally."""
    if dialect == "sqlite":
        return value.replace("[", "[[]")
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def match_text(column: Any, values: Sequence[str], dialect: str
               ) -> ColumnElement[bool]:
    """Single value or wildcard matching of each of `values`; any may match."""
    conditions = []
    for value in values:
        if not _has_wildcard(value):
            conditions.append(column == value)
        elif dialect == "sqlite":
            conditions.append(column.op("GLOB")(wildcard_pattern(value, dialect)))
        else:
            conditions.append(column.like(wildcard_pattern(value, dialect), escape="\\"))
    return or_(*conditions)


def match_uids(column: Any, values: Sequence[str], keyword: str
               ) -> ColumnElement[bool]:
    """Single value or list of UIDs (PS3.4 C.2.2.2.2). Raises MatchingValueError for a
    wildcard."""
    if any(_has_wildcard(v) for v in values):
        raise MatchingValueError(f"{keyword}: no wildcards in a UID", keyword)
    return column == values[0] if len(values) == 1 else column.in_(values)


def _range(value: str, pattern: re.Pattern[str], keyword: str) -> tuple[str, str]:
    low, dash, high = value.partition("-")
    if not dash:
        high = low
    for bound in (low, high):
        if bound and not pattern.fullmatch(bound):
            raise MatchingValueError(f"{keyword}: {bound!r} is not a valid value or range",
                                     keyword)
    if not low and not high:
        raise MatchingValueError(f"{keyword}: '-' is not a range", keyword)
    return low, high


def match_dates(column: Any, values: Sequence[str], keyword: str
                ) -> ColumnElement[bool]:
    """Single date or date range, YYYYMMDD (PS3.4 C.2.2.2.5); several values: any."""
    conditions = []
    for value in values:
        low, high = _range(value, _DATE, keyword)
        conditions.append(_between(column, low, high))
    return or_(*conditions)


def match_times(column: Any, values: Sequence[str], keyword: str
                ) -> ColumnElement[bool]:
    """Single time or time range, HH[MM[SS[.F]]] (PS3.4 C.2.2.2.5): '10-11' is 10:00:00 to
    11:59:59.999999, the upper bound taking in all of its last unit."""
    conditions = []
    for value in values:
        low, high = _range(value, _TIME, keyword)
        conditions.append(_between(column, low, (high + "999999.999999"[len(high):])
                                   if high else ""))
    return or_(*conditions)


def _between(column: Any, low: str, high: str) -> ColumnElement[bool]:
    parts = [column != ""]
    if low:
        parts.append(column >= low)
    if high:
        parts.append(column <= high)
    return and_(*parts)


def match_numbers(column: Any, values: Sequence[str], keyword: str
                  ) -> ColumnElement[bool]:
    """Single value matching of an IS key; several values: any."""
    try:
        numbers = [int(v) for v in values]
    except ValueError:
        raise MatchingValueError(f"{keyword}: not an integer string", keyword) from None
    return column.in_(numbers)


def match_modalities(values: Sequence[str], dialect: str) -> ColumnElement[bool]:
    """ModalitiesInStudy: the study has a series of one of `values` (wildcards allowed)."""
    s = aliased(Series)
    return (select(s.id).where(s.study_pk == Study.id,
                               match_text(s.modality, values, dialect)).exists())


