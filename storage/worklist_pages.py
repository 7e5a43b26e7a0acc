"""The worklist a page at a time, ordered and filtered in SQL, with keyset paging.

The order is `storage.worklist`'s: studies with a positive call first, the most probable
first; then those whose negative is provisional ("incomplete"); then the rest, oldest first.
Each study's sort key is computed in one grouped query over the newest result of each image
series, and a page continues strictly after the key of the last row of the page before (the
cursor), so no row is skipped or repeated while new studies arrive and page 50 costs no
OFFSET. Rows are then filled in by `storage.worklist.entries_for`.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import (
    Engine,
    and_,
    case,
    func,
    literal,
    select,
    tuple_,
)

from storage.db import reader
from storage.jsonsql import json_number, json_true
from storage.models import Series, SeriesStatus, Study, TriageResult, UTCDateTime
from storage.worklist import WorklistEntry, entries_for

Sort = Literal["priority", "arrival"]
PRIORITIES = ("high", "incomplete", "routine")
# The most pressing first, as storage.worklist shows a study's status.
STATUSES = ("processing", "queued", "receiving", "failed", "done", "not_eligible")


class CursorError(ValueError):
    """A cursor this query did not make (or made for another sort)."""


@dataclass(frozen=True)
class Filters:
    status: str | None = None
    priority: str | None = None
    finding: str | None = None  # a label the shown result calls positive
    study_date_from: str | None = None  # DICOM DA, YYYYMMDD, inclusive
    study_date_to: str | None = None

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}")
        if self.priority is not None and self.priority not in PRIORITIES:
            raise ValueError(f"priority must be one of {', '.join(PRIORITIES)}")
        for name in ("study_date_from", "study_date_to"):
            value = getattr(self, name)
            if value is not None:
                try:
                    datetime.strptime(value, "%Y%m%d")
                except ValueError:
                    raise ValueError(f"{name} must be a date YYYYMMDD, got {value!r}") from None


@dataclass(frozen=True)
class Page:
    entries: list[WorklistEntry]
    next_cursor: str | None


def _study_keys(engine: Engine, finding: str | None) -> Any:
    """One row per study with image series: its priority rank, -p(any) of its most probable
    positive result, arrival, status rank and whether `finding` is called."""
    latest = (select(TriageResult.series_pk, func.max(TriageResult.id).label("result_pk"))
              .group_by(TriageResult.series_pk).subquery())
    positive = TriageResult.positive.is_(True)
    status_rank = case(*[(Series.status == SeriesStatus(s), i) for i, s in enumerate(STATUSES)],
                       else_=len(STATUSES))
    p_any = json_number(engine, TriageResult.probabilities, "any")
    is_pos = func.max(case((positive, 1), else_=0))
    is_incomplete = func.max(case((and_(TriageResult.complete.is_(False), ~positive), 1),
                                  else_=0))
    rank = case((is_pos == 1, 0), (is_incomplete == 1, 1), else_=2)
    columns = [
        Series.study_pk.label("study_pk"),
        rank.label("rank"),
        (-func.coalesce(func.max(case((positive, p_any))), 0.0)).label("neg_p"),
        func.min(Series.first_received_at).label("arrival"),
        func.min(status_rank).label("status_rank"),
    ]
    if finding is not None:
        columns.append(func.max(case((json_true(engine, TriageResult.calls, finding), 1),
                                     else_=0)).label("found"))
    return (select(*columns)
            .outerjoin(latest, latest.c.series_pk == Series.id)
            .outerjoin(TriageResult, TriageResult.id == latest.c.result_pk)
            .where(Series.modality != "SR")  # reports are not images (storage.worklist)
            .group_by(Series.study_pk).subquery("keys"))


def _encode(values: list[Any], sort: Sort) -> str:
    raw = json.dumps([sort, *values], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(cursor: str, sort: Sort) -> list[Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = json.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise CursorError("cursor is not one this API gave") from exc
    shape = 5 if sort == "priority" else 3
    if (not isinstance(values, list) or len(values) != shape or values[0] != sort
            or not isinstance(values[-1], int)):
        raise CursorError("cursor is not one this API gave for this sort")
    try:
        values[-2] = datetime.fromisoformat(values[-2])
        if sort == "priority":
            values[1], values[2] = int(values[1]), float(values[2])
    except (TypeError, ValueError) as exc:
        raise CursorError("cursor is not one this API gave") from exc
    return values[1:]


def page(engine: Engine, *, sort: Sort = "priority", filters: Filters | None = None,
         limit: int = 50, cursor: str | None = None) -> Page:
    """One page of the worklist, and the cursor of the next (None on the last page)."""
    if sort not in ("priority", "arrival"):
        raise ValueError(f"sort must be 'priority' or 'arrival', got {sort!r}")
    if not 1 <= limit <= 500:
        raise ValueError(f"limit must be 1-500, got {limit}")
    filters = filters or Filters()
    keys = _study_keys(engine, filters.finding)
    arrival = keys.c.arrival
    query = select(keys.c.study_pk, keys.c.rank, keys.c.neg_p, arrival).join(
        Study, Study.id == keys.c.study_pk)
    if filters.status is not None:
        query = query.where(keys.c.status_rank == STATUSES.index(filters.status))
    if filters.priority is not None:
        query = query.where(keys.c.rank == PRIORITIES.index(filters.priority))
    if filters.finding is not None:
        query = query.where(keys.c.found == 1)
    if filters.study_date_from is not None:
        query = query.where(Study.study_date >= filters.study_date_from)
    if filters.study_date_to is not None:
        query = query.where(Study.study_date <= filters.study_date_to)
    if sort == "priority":
        order: list[Any] = [keys.c.rank, keys.c.neg_p, arrival, keys.c.study_pk]
    else:
        order = [arrival.desc(), keys.c.study_pk.desc()]
    if cursor is not None:
        after = _decode(cursor, sort)
        typed = [literal(v, type_=UTCDateTime()) if isinstance(v, datetime) else literal(v)
                 for v in after]
        if sort == "priority":
            query = query.where(tuple_(*order) > tuple_(*typed))
        else:
            query = query.where(tuple_(arrival, keys.c.study_pk) < tuple_(*typed))
    rows = _run(engine, query.order_by(*order).limit(limit + 1))
    more = len(rows) > limit
    rows = rows[:limit]
    entries = entries_for(engine, [r.study_pk for r in rows])
    by_pk = _uids(engine, [r.study_pk for r in rows])
    ordered = [entries[by_pk[r.study_pk]] for r in rows if by_pk.get(r.study_pk) in entries]
    next_cursor = None
    if more and rows:
        last = rows[-1]
        when = last.arrival.astimezone(UTC).isoformat() if last.arrival else _EPOCH
        values = ([int(last.rank), float(last.neg_p), when, int(last.study_pk)]
                  if sort == "priority" else [when, int(last.study_pk)])
        next_cursor = _encode(values, sort)
    return Page(ordered, next_cursor)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC).isoformat()


def _run(engine: Engine, query: Any) -> list[Any]:
    with reader(engine).connect() as conn:
        return list(conn.execute(query))


def _uids(engine: Engine, pks: list[int]) -> dict[int, str]:
    if not pks:
        return {}
    with reader(engine).connect() as conn:
        return {int(pk): uid for pk, uid in conn.execute(
            select(Study.id, Study.study_uid).where(Study.id.in_(pks)))}


__all__ = ["PRIORITIES", "STATUSES", "CursorError", "Filters", "Page", "page"]
