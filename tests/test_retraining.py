"""The retraining lock on SQLite and PostgreSQL: one run at a time, held across restarts, and
taken over only from a process that is gone; the feedback labels new since the last run."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, insert
from sqlalchemy.exc import IntegrityError

from storage.feedback import FeedbackStore
from storage.files import FileStore
from storage.models import JobStatus, Retraining, utcnow
from storage.retraining import RetrainingBusyError, RetrainingLog
from tests.webdata import add_study


def test_one_retraining_at_a_time(engine: Engine) -> None:
    log = RetrainingLog(engine)
    first = log.start("host:1", alive=lambda owner: True)
    with pytest.raises(RetrainingBusyError, match="a retraining is running by host:1 since"):
        log.start("host:2", alive=lambda owner: True)
    log.finish(first, ok=True, candidate="c1", outcome="kept: not better")
    second = log.start("host:2", alive=lambda owner: True)
    assert second != first
    assert [(r.status, r.owner, r.candidate, r.outcome) for r in log.runs()] == [
        ("done", "host:1", "c1", "kept: not better"), ("running", "host:2", "", "")]


def test_a_run_whose_process_ended_is_failed_and_the_lock_taken_over(engine: Engine) -> None:
    log = RetrainingLog(engine)
    log.start("host:1", alive=lambda owner: True)
    asked: list[str] = []

    def alive(owner: str) -> bool:
        asked.append(owner)
        return False

    log.start("host:2", alive=alive)  # after a restart: the old run's process is gone
    assert asked == ["host:1"]
    assert [(r.status, r.outcome) for r in log.runs()] == [
        ("failed", "its process host:1 ended before it finished"), ("running", "")]


def test_the_database_refuses_a_second_running_row(engine: Engine) -> None:
    RetrainingLog(engine).start("host:1", alive=lambda owner: True)
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(insert(Retraining).values(status=JobStatus.RUNNING, owner="host:9",
                                               started_at=utcnow(), candidate="", outcome=""))


def test_new_labels_count_from_the_last_retraining_that_ended_well(
        engine: Engine, tmp_path: Path) -> None:
    from ml.labels import LABELS

    files = FileStore(tmp_path / "files")
    first, second = (add_study(engine, files, n, slices=2, p_any=0.3) for n in (1, 2))
    feedback, log = FeedbackStore(engine), RetrainingLog(engine)
    feedback.add(first.study_uid, dict.fromkeys(LABELS, False), author="r", token_pk=None,
                 result_pk=first.result_pk)
    assert log.last_done_start() is None and feedback.count_since(None) == 6
    done = log.start("host:1", alive=lambda owner: True)
    log.finish(done, ok=True)
    started = log.last_done_start()
    assert started is not None and started.tzinfo is not None
    assert feedback.count_since(started) == 0  # labels given before it started are its own
    feedback.add(second.study_uid, {"any": True, "subdural": True}, author="r", token_pk=None,
                 result_pk=second.result_pk)
    failed = log.start("host:1", alive=lambda owner: True)
    log.finish(failed, ok=False, outcome="RuntimeError: out of memory")
    assert log.last_done_start() == started  # a failed run used nothing: it resets nothing
    assert feedback.count_since(log.last_done_start()) == 2
