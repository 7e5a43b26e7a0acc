"""What the node has done, counted from the index: the figures `/metrics` and `/healthz` show.

Counted in SQL at each scrape because the receivers and workers run in other processes (and
on other hosts with PostgreSQL): the database is the one place that sees them all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, case, func, select

from storage.db import reader
from storage.jsonsql import json_true
from storage.models import Association, Delivery, Instance, Job, Series, TriageResult


@dataclass(frozen=True)
class Counts:
    instances: int = 0
    duplicates: int = 0
    associations: dict[str, int] = field(default_factory=dict)  # by state
    association_failures: int = 0  # instances refused inside accepted associations
    series: dict[str, int] = field(default_factory=dict)  # by status
    jobs: dict[str, int] = field(default_factory=dict)  # by status
    job_seconds_sum: float = 0.0  # done jobs, started to finished
    job_seconds_count: int = 0
    deliveries: dict[str, int] = field(default_factory=dict)  # by status
    results: int = 0
    latency_sum: float = 0.0  # last slice to result
    latency_count: int = 0
    positives: dict[str, int] = field(default_factory=dict)  # results calling each label

    @property
    def queue_depth(self) -> int:
        return self.jobs.get("queued", 0) + self.jobs.get("running", 0)


def _grouped(conn: Connection, column: Any) -> dict[str, int]:
    return {str(k): int(n) for k, n in conn.execute(select(column, func.count()).group_by(column))}


def count(engine: Engine, labels: Sequence[str]) -> Counts:
    with reader(engine).connect() as conn:
        instances, duplicates = conn.execute(
            select(func.count(), func.coalesce(func.sum(Instance.duplicates), 0))).one()
        failures = conn.execute(select(func.coalesce(func.sum(Association.failed), 0))).scalar()
        done = conn.execute(select(Job.started_at, Job.finished_at).where(
            Job.status == "done", Job.started_at.is_not(None),
            Job.finished_at.is_not(None))).all()
        results, latency_sum, latency_count = conn.execute(select(
            func.count(), func.coalesce(func.sum(TriageResult.latency_seconds), 0.0),
            func.count(TriageResult.latency_seconds))).one()
        positives = conn.execute(select(*[
            func.coalesce(func.sum(case((json_true(engine, TriageResult.calls, label), 1),
                                        else_=0)), 0) for label in labels])).one() \
            if labels else ()
        return Counts(
            instances=int(instances), duplicates=int(duplicates),
            associations=_grouped(conn, Association.state),
            association_failures=int(failures or 0),
            series=_grouped(conn, Series.status), jobs=_grouped(conn, Job.status),
            job_seconds_sum=sum((f - s).total_seconds() for s, f in done if s and f),
            job_seconds_count=len(done), deliveries=_grouped(conn, Delivery.status),
            results=int(results), latency_sum=float(latency_sum or 0.0),
            latency_count=int(latency_count),
            positives={label: int(n) for label, n in zip(labels, positives, strict=True)})
