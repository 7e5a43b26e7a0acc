"""What the node has done, counted from the index: the figures `/metrics` and `/healthz` show.

Counted in SQL at each scrape because the receivers and workers run in other processes (and
on other hosts with PostgreSQL): the database is the one place that sees them all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, Float, case, cast, func, select

from storage.db import reader
from storage.jsonsql import json_true
from storage.models import Association, Delivery, Instance, Job, Series, TriageResult

# Upper bounds (seconds) of the histograms' buckets.
JOB_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
INFERENCE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class Histogram:
    """Cumulative counts at each upper bound (Prometheus' `le`), their count and sum."""

    buckets: tuple[tuple[float, int], ...] = ()
    count: int = 0
    sum: float = 0.0


@dataclass(frozen=True)
class Counts:
    instances: int = 0
    duplicates: int = 0
    associations: dict[str, int] = field(default_factory=dict)  # by state
    association_failures: int = 0  # instances refused inside accepted associations
    series: dict[str, int] = field(default_factory=dict)  # by status
    jobs: dict[str, int] = field(default_factory=dict)  # by status
    job_seconds: Histogram = Histogram()  # done jobs, started to finished
    deliveries: dict[str, int] = field(default_factory=dict)  # by status
    results: int = 0
    latency: Histogram = Histogram()  # last slice to result
    inference: Histogram = Histogram()  # the model's own time per result
    positives: dict[str, int] = field(default_factory=dict)  # results calling each label

    @property
    def queue_depth(self) -> int:
        return self.jobs.get("queued", 0) + self.jobs.get("running", 0)


def _grouped(conn: Connection, column: Any) -> dict[str, int]:
    return {str(k): int(n) for k, n in conn.execute(select(column, func.count()).group_by(column))}


def seconds_between(engine: Engine, start: Any, end: Any) -> Any:
    """SQL for `end - start` in seconds, for two UTCDateTime columns."""
    if engine.dialect.name == "sqlite":  # stored as ISO text in UTC
        return (func.julianday(end) - func.julianday(start)) * 86400.0
    return func.extract("epoch", end - start)


def histogram(conn: Connection, value: Any, bounds: Sequence[float], *where: Any) -> Histogram:
    """The histogram of the SQL expression `value` over the rows `where` selects (NULLs left
    out), counted in the database: one row back, whatever the table's size."""
    value = cast(value, Float)
    row = conn.execute(select(
        func.count(value), func.coalesce(func.sum(value), 0.0),
        *[func.coalesce(func.sum(case((value <= b, 1), else_=0)), 0) for b in bounds],
    ).where(*where)).one()
    return Histogram(tuple((b, int(n)) for b, n in zip(bounds, row[2:], strict=True)),
                     int(row[0]), float(row[1]))


def job_counts(engine: Engine) -> dict[str, int]:
    """Jobs by status alone: what /healthz needs, without the scans of `count`."""
    with reader(engine).connect() as conn:
        return _grouped(conn, Job.status)


def count(engine: Engine, labels: Sequence[str]) -> Counts:
    with reader(engine).connect() as conn:
        instances, duplicates = conn.execute(
            select(func.count(), func.coalesce(func.sum(Instance.duplicates), 0))).one()
        failures = conn.execute(select(func.coalesce(func.sum(Association.failed), 0))).scalar()
        jobs = histogram(conn, seconds_between(engine, Job.started_at, Job.finished_at),
                         JOB_BUCKETS, Job.status == "done")
        results = conn.execute(select(func.count(TriageResult.id))).scalar_one()
        latency = histogram(conn, TriageResult.latency_seconds, JOB_BUCKETS)
        inference = histogram(conn, TriageResult.inference_seconds, INFERENCE_BUCKETS)
        positives = conn.execute(select(*[
            func.coalesce(func.sum(case((json_true(engine, TriageResult.calls, label), 1),
                                        else_=0)), 0) for label in labels])).one() \
            if labels else ()
        return Counts(
            instances=int(instances), duplicates=int(duplicates),
            associations=_grouped(conn, Association.state),
            association_failures=int(failures or 0),
            series=_grouped(conn, Series.status), jobs=_grouped(conn, Job.status),
            job_seconds=jobs, deliveries=_grouped(conn, Delivery.status),
            results=int(results), latency=latency, inference=inference,
            positives={label: int(n) for label, n in zip(labels, positives, strict=True)})
