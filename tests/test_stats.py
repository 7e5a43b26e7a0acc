"""`ichtriage admin stats` on SQLite and PostgreSQL: volumes per UTC day, the queue,
turnaround percentiles, positive rate and agreement with feedback per label."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, insert, select, update

from ml.labels import LABELS
from node.config import load_settings
from storage.db import make_engine, upgrade
from storage.feedback import FeedbackStore
from storage.files import FileStore
from storage.models import Instance, Job, JobStatus, Series, Study, TriageResult
from storage.stats import collect, percentile
from tests.webdata import StudyRef, add_study

ROOT = Path(__file__).resolve().parents[1]
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)  # the stats' "now": noon, far from midnight


def place(engine: Engine, ref: StudyRef, at: datetime) -> None:
    """Say the study, its series and instances arrived at `at` (and its result came then)."""
    with engine.begin() as conn:
        conn.execute(update(Study).where(Study.study_uid == ref.study_uid).values(created_at=at))
        conn.execute(update(Series).where(Series.id == ref.series_pk).values(
            first_received_at=at, last_received_at=at))
        conn.execute(update(Instance).where(Instance.series_pk == ref.series_pk).values(
            received_at=at))
        conn.execute(update(TriageResult).where(TriageResult.series_pk == ref.series_pk)
                     .values(created_at=at))


def seed(engine: Engine, files: FileStore) -> list[StudyRef]:
    """Four studies: two positive results today (latencies 4 s and 10 s), a negative one
    whose result is 10 days old, one without a result two days ago; five jobs; feedback."""
    refs = [add_study(engine, files, 1, slices=3, p_any=0.9, findings=("subdural",)),
            add_study(engine, files, 2, slices=3, p_any=0.8, findings=("epidural", "subdural")),
            add_study(engine, files, 3, slices=3, p_any=0.1),
            add_study(engine, files, 4, slices=2)]
    for ref, at in zip(refs, (NOW - timedelta(hours=1), NOW - timedelta(hours=2),
                              NOW - timedelta(days=10), NOW - timedelta(days=2)), strict=True):
        place(engine, ref, at)
    with engine.begin() as conn:
        for ref, seconds in ((refs[0], 4.0), (refs[1], 10.0), (refs[2], 1000.0)):
            conn.execute(update(TriageResult).where(TriageResult.id == ref.result_pk)
                         .values(latency_seconds=seconds))
        conn.execute(insert(Job), [
            {"kind": "triage", "queueing_lock": f"s{i}", "series_pk": refs[0].series_pk,
             "status": status} for i, status in enumerate(
                [JobStatus.QUEUED, JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.FAILED,
                 JobStatus.DONE])])
    feedback = FeedbackStore(engine)
    feedback.add(refs[0].study_uid, {"any": True, "subdural": True}, author="r", token_pk=None,
                 result_pk=refs[0].result_pk)
    feedback.add(refs[1].study_uid, {"epidural": False}, author="r", token_pk=None,
                 result_pk=refs[1].result_pk)
    return refs


def test_percentile_interpolates_like_numpy() -> None:
    assert percentile([], 50) is None and percentile([3.0], 95) == 3.0
    assert percentile([10.0, 4.0], 50) == 7.0
    assert percentile([4.0, 10.0], 95) == pytest.approx(9.7)
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 95) == pytest.approx(4.8)
    with pytest.raises(ValueError, match="q: must lie in"):
        percentile([1.0], 101)


def test_stats_count_the_window_per_utc_day(engine: Engine, tmp_path: Path) -> None:
    seed(engine, FileStore(tmp_path / "files"))
    stats = collect(engine, LABELS, days=7, now=NOW)
    assert stats.since == datetime(2026, 11, 14, tzinfo=UTC)
    by_day = {d.day: (d.studies, d.series, d.instances, d.results) for d in stats.days}
    assert list(by_day) == [f"2026-11-{d}" for d in range(14, 21)]
    assert by_day["2026-11-20"] == (2, 2, 6, 2)
    assert by_day["2026-11-18"] == (1, 1, 2, 0)
    assert sum(map(sum, by_day.values())) == (2 + 2 + 6 + 2) + (1 + 1 + 2 + 0)  # none elsewhere
    assert stats.totals == {"studies": 3, "series": 3, "instances": 8, "results": 2}
    assert stats.queue == {"queued": 2, "running": 1, "done": 1, "failed": 1}
    # the 10-day-old result (1000 s) is outside the window
    assert (stats.turnaround_p50, stats.turnaround_count) == (7.0, 2)
    assert stats.turnaround_p95 == pytest.approx(9.7)
    rates = {r.label: (r.positive, r.results) for r in stats.labels}
    assert rates["any"] == (2, 2) and rates["subdural"] == (2, 2)
    assert rates["epidural"] == (1, 2) and rates["intraventricular"] == (0, 2)
    agreement = {a.label: (a.confirmed, a.corrected) for a in stats.agreement}
    assert agreement == {"any": (1, 0), "subdural": (1, 0), "epidural": (0, 1)}
    # two days: today and yesterday; the study of two days ago falls out
    short = collect(engine, LABELS, days=2, now=NOW)
    assert [d.day for d in short.days] == ["2026-11-19", "2026-11-20"]
    assert short.totals == {"studies": 2, "series": 2, "instances": 6, "results": 2}
    with pytest.raises(ValueError, match="days: must be >= 1"):
        collect(engine, LABELS, days=0, now=NOW)


def test_stats_command_prints_a_table_and_json(tmp_path: Path) -> None:
    data = tmp_path / "var"
    settings = load_settings(env={"ICHTRIAGE_DATA_DIR": str(data)})
    data.mkdir()
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        refs = seed(engine, FileStore(settings.files_dir))
        today = datetime.now(UTC) - timedelta(minutes=1)
        place(engine, refs[0], today)  # the command counts back from now
        with engine.connect() as conn:
            assert conn.execute(select(Study.created_at).where(
                Study.study_uid == refs[0].study_uid)).scalar_one() == today
    finally:
        engine.dispose()

    def stats(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "node", "admin", "stats", *args,
                               "--data-dir", str(data)], capture_output=True, text=True,
                              cwd=ROOT, timeout=120,
                              env={**os.environ, "ICHTRIAGE_LOG_LEVEL": "WARNING"})

    done = stats("--json", "--days", "3")
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert len(figures["days"]) == 3 and figures["days"][-1]["studies"] >= 1
    assert figures["queue"]["queued"] == 2
    assert figures["agreement"]["epidural"] == {"confirmed": 0, "corrected": 1, "ratio": 0.0}
    assert figures["positive_rate"]["subdural"]["positive"] >= 1
    table = stats().stdout
    assert "day (UTC)" in table and "turnaround p50" in table
    assert "subdural" in table and "PID-" not in table and "SECRET" not in table
    assert stats("--days", "0").returncode == 2
    missing = subprocess.run([sys.executable, "-m", "node", "admin", "stats", "--data-dir",
                              str(tmp_path / "none")], capture_output=True, text=True, cwd=ROOT,
                             timeout=120)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
