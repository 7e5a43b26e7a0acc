"""The admin's figures over the last days (`ichtriage admin stats`): what arrived, per UTC
day; the queue; how fast results came (last slice to result); how often each label was called;
how often radiologists agreed with the calls.

Counted in SQL on SQLite and PostgreSQL alike; days are UTC days, whatever the server's
TimeZone. Percentiles are computed here from the window's latencies (SQLite has no
percentile_cont), interpolated linearly between the nearest ranks as numpy's default does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, case, func, select

from storage.db import reader
from storage.feedback import Agreement, FeedbackStore
from storage.jsonsql import json_true
from storage.models import Instance, Job, JobStatus, Series, Study, TriageResult, utcnow


@dataclass(frozen=True)
class DayVolume:
    day: str  # YYYY-MM-DD, UTC
    studies: int  # first seen that day
    series: int  # first instance received that day
    instances: int  # received that day (a repeated SOP Instance UID is not counted again)
    results: int


@dataclass(frozen=True)
class LabelRate:
    label: str
    positive: int  # results of the window calling the label
    results: int

    @property
    def rate(self) -> float | None:
        return self.positive / self.results if self.results else None


@dataclass(frozen=True)
class NodeStats:
    since: datetime  # start of the window: 00:00 UTC, `days` - 1 days before today
    days: list[DayVolume]  # oldest first, every day of the window (zeros included)
    queue: dict[str, int]  # jobs by status: queued, running, failed (done: all time)
    turnaround_p50: float | None  # seconds from the last slice received to the result
    turnaround_p95: float | None
    turnaround_count: int
    labels: list[LabelRate]
    agreement: list[Agreement]  # all time, the newest word on each study and label
    totals: dict[str, int] = field(default_factory=dict)  # studies/series/instances/results

    def to_dict(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat(), "totals": self.totals,
            "days": [vars(d) for d in self.days], "queue": self.queue,
            "turnaround_seconds": {"p50": self.turnaround_p50, "p95": self.turnaround_p95,
                                   "results": self.turnaround_count},
            "positive_rate": {r.label: {"positive": r.positive, "results": r.results,
                                        "rate": r.rate} for r in self.labels},
            "agreement": {a.label: {"confirmed": a.confirmed, "corrected": a.corrected,
                                    "ratio": a.ratio} for a in self.agreement},
        }


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) of `values`, linear between closest ranks; None if empty."""
    if not 0 <= q <= 100:
        raise ValueError(f"q: must lie in [0, 100], got {q}")
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def utc_day(engine: Engine, column: Any) -> ColumnElement[Any]:
    """YYYY-MM-DD of a UTCDateTime column, in UTC on both databases."""
    if engine.dialect.name == "postgresql":
        return func.to_char(func.timezone("UTC", column), "YYYY-MM-DD")
    return func.date(column)  # SQLite keeps the UTC time as text


def _per_day(conn: Connection, engine: Engine, column: Any, since: datetime) -> dict[str, int]:
    day = utc_day(engine, column)
    query = select(day, func.count()).where(column >= since).group_by(day)
    return {str(d): int(n) for d, n in conn.execute(query)}


def collect(engine: Engine, labels: Sequence[str], *, days: int = 7,
            now: datetime | None = None) -> NodeStats:
    """The figures of the last `days` UTC days, today included; ValueError when days < 1."""
    if days < 1:
        raise ValueError(f"days: must be >= 1, got {days}")
    now = now or utcnow()
    first: date = now.astimezone(UTC).date() - timedelta(days=days - 1)
    since = datetime(first.year, first.month, first.day, tzinfo=UTC)
    with reader(engine).connect() as conn:
        counts = {name: _per_day(conn, engine, column, since) for name, column in (
            ("studies", Study.created_at), ("series", Series.first_received_at),
            ("instances", Instance.received_at), ("results", TriageResult.created_at))}
        queue = {str(s): int(n) for s, n in conn.execute(
            select(Job.status, func.count()).group_by(Job.status))}
        latencies = [float(v or 0.0) for v in conn.execute(
            select(TriageResult.latency_seconds).where(
                TriageResult.created_at >= since,
                TriageResult.latency_seconds.is_not(None))).scalars()]  # NULL: left out
        results, *positives = conn.execute(select(func.count(), *[
            func.coalesce(func.sum(case((json_true(engine, TriageResult.calls, label), 1),
                                        else_=0)), 0) for label in labels]).where(
            TriageResult.created_at >= since)).one()
    window = [(first + timedelta(days=i)).isoformat() for i in range(days)]
    return NodeStats(
        since=since,
        days=[DayVolume(d, *(counts[k].get(d, 0) for k in ("studies", "series", "instances",
                                                           "results"))) for d in window],
        queue={s.value: queue.get(s.value, 0) for s in JobStatus},
        turnaround_p50=percentile(latencies, 50), turnaround_p95=percentile(latencies, 95),
        turnaround_count=len(latencies),
        labels=[LabelRate(label, int(n), int(results)) for label, n in zip(labels, positives,
                                                                           strict=True)],
        agreement=FeedbackStore(engine).agreement(),
        totals={k: sum(v.values()) for k, v in counts.items()},
    )
