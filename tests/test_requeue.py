"""`admin requeue`: failed series, one study, or everything since a time, queued again after a
model fix, on SQLite and PostgreSQL; and through the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import torch
from pydicom import dcmread
from sqlalchemy import Engine, select, update

from ml.checkpoint import ModelCard, save_checkpoint
from ml.models import build_model
from ml.phantom import write_series
from node.dicom.eligibility import EligibilityRules
from node.dicom.meta import meta_from_dataset
from node.scheduler import TRIAGE, SeriesMonitor, series_lock
from node.triage.registry import ModelHolder, import_checkpoint
from node.triage.worker import TriageWorker
from storage.errors import InvalidUIDError
from storage.files import FileStore
from storage.instances import InstanceStore
from storage.jobs import JobQueue
from storage.models import Job, Series, SeriesStatus, Study, TriageResult
from storage.outbox import Outbox
from storage.registry import ModelRegistry
from storage.requeue import Selection, UnknownStudyError, requeue
from storage.results import Results
from storage.retry import RetryPolicy
from storage.series import SeriesIndex

ROOT = Path(__file__).resolve().parents[1]


def receive(engine: Engine, files: FileStore, folder: Path, seed: int) -> str:
    series = write_series(folder, seed=seed, slices=8, size=64)
    store = InstanceStore(engine, files)
    for path in series.paths:
        ds = dcmread(path, stop_before_pixels=True)
        store.store(meta_from_dataset(ds, ds.file_meta.TransferSyntaxUID), [path.read_bytes()])
    return series.series_uid


def statuses(engine: Engine) -> dict[str, str]:
    with engine.connect() as conn:
        return {uid: str(status) for uid, status in
                conn.execute(select(Series.series_uid, Series.status)).all()}


def queued_locks(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return sorted(conn.execute(select(Job.queueing_lock)
                                   .where(Job.status == "queued")).scalars())


def set_status(engine: Engine, uid: str, status: SeriesStatus) -> None:
    with engine.begin() as conn:
        conn.execute(update(Series).where(Series.series_uid == uid).values(status=status))


@pytest.fixture
def four(engine: Engine, tmp_path: Path) -> dict[str, str]:
    """Four series in four states: done, failed, not eligible, receiving."""
    files = FileStore(tmp_path / "data")
    uids = {}
    for seed, status in enumerate((SeriesStatus.DONE, SeriesStatus.FAILED,
                                   SeriesStatus.NOT_ELIGIBLE, SeriesStatus.RECEIVING)):
        uids[status.value] = receive(engine, files, tmp_path / f"s{seed}", seed=400 + seed)
        set_status(engine, uids[status.value], status)
    return uids


def study_of(engine: Engine, series_uid: str) -> str:
    with engine.connect() as conn:
        return str(conn.execute(select(Study.study_uid).join(Series, Series.study_pk == Study.id)
                                .where(Series.series_uid == series_uid)).scalar_one())


def run(engine: Engine, selection: Selection, dry_run: bool = False) -> list[tuple[str, str, bool]]:
    done = requeue(engine, JobQueue(engine), selection, kind=TRIAGE, lock=series_lock,
                   reason="test", dry_run=dry_run)
    return [(d.series_uid, d.was, d.queued) for d in done]


def test_failed_series_are_queued_again_once(engine: Engine, four: dict[str, str]) -> None:
    before = statuses(engine)
    assert run(engine, Selection(failed=True), dry_run=True) == [(four["failed"], "failed", False)]
    assert statuses(engine) == before and queued_locks(engine) == []  # a dry run changes nothing
    assert run(engine, Selection(failed=True)) == [(four["failed"], "failed", True)]
    assert statuses(engine) == {**before, four["failed"]: "queued"}
    assert queued_locks(engine) == [series_lock(four["failed"])]
    assert run(engine, Selection(failed=True)) == []  # queued now: not failed any more


def test_one_study_or_everything_since_a_time(engine: Engine, four: dict[str, str]) -> None:
    assert run(engine, Selection(study_uid=study_of(engine, four["done"]))) == [
        (four["done"], "done", True)]
    assert run(engine, Selection(study_uid=study_of(engine, four["not_eligible"]))) == []
    future = datetime.now(UTC) + timedelta(hours=1)
    assert run(engine, Selection(since=future)) == []
    past = datetime.now(UTC) - timedelta(hours=1)
    assert run(engine, Selection(since=past)) == [(four["failed"], "failed", True)]  # done: queued
    assert queued_locks(engine) == sorted([series_lock(four["done"]), series_lock(four["failed"])])


def test_bad_selections_are_refused_and_change_nothing(engine: Engine,
                                                       four: dict[str, str]) -> None:
    before = statuses(engine)
    with pytest.raises(UnknownStudyError, match="no study 1.2.3.999"):
        run(engine, Selection(study_uid="1.2.3.999"))
    with pytest.raises(InvalidUIDError):
        Selection(study_uid="not-a-uid")
    with pytest.raises(ValueError, match="no time zone"):
        Selection(since=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="choose one"):
        Selection(failed=True, since=datetime.now(UTC))
    assert statuses(engine) == before and queued_locks(engine) == []


def test_a_study_failed_for_want_of_a_model_is_triaged_after_the_fix_and_requeue(
        engine: Engine, tmp_path: Path) -> None:
    files = FileStore(tmp_path / "data")
    uid = receive(engine, files, tmp_path / "in", seed=410)
    queue = JobQueue(engine, retry=RetryPolicy(max_attempts=1, backoff_seconds=0))
    SeriesMonitor(SeriesIndex(engine), queue, EligibilityRules(min_slices=4),
                  settle_seconds=0).run_once()
    registry = ModelRegistry(engine, tmp_path / "models")
    worker = TriageWorker(results=Results(engine), queue=queue,
                          store=InstanceStore(engine, files), files=files, outbox=Outbox(engine),
                          model=ModelHolder(registry, device="cpu"), destinations=[],
                          min_slices=4, ae_title="NODE1", batch_size=4, name="test")
    assert worker.run_once()
    assert statuses(engine)[uid] == "failed"  # no model active: failed, with the reason
    with engine.connect() as conn:
        assert "no model is active" in conn.execute(select(Series.status_reason)).scalar_one()
    torch.manual_seed(0)  # the fix: a model is registered and made active
    card = ModelCard.new("ichnet", windows=("brain",), input_size=32, training_data="test")
    path = tmp_path / "m.pt"
    save_checkpoint(path, build_model("ichnet", in_channels=card.in_channels, input_size=32),
                    card)
    import_checkpoint(registry, path, name="fixed", actor="admin", activate=True)
    assert run(engine, Selection(failed=True)) == [(uid, "failed", True)]
    assert worker.run_once()
    assert statuses(engine)[uid] == "done"
    with engine.connect() as conn:
        assert conn.execute(select(TriageResult.model_name)).scalars().all() == ["fixed"]
    # read again unchanged: a result without a latency, which the first read had (its wait
    # since the last slice would count in stats and metrics as the node's speed)
    assert [r[2] for r in run(engine, Selection(study_uid=study_of(engine, uid)))] == [True]
    assert worker.run_once()
    with engine.connect() as conn:
        latencies = conn.execute(select(TriageResult.latency_seconds)
                                 .order_by(TriageResult.id)).scalars().all()
    assert len(latencies) == 2 and latencies[0] is not None and latencies[0] >= 0
    assert latencies[1] is None


def test_requeue_from_the_command_line(engine: Engine, four: dict[str, str],
                                       tmp_path: Path) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("the command line is the same on both; once is enough")
    env = {**os.environ, "PYTHONWARNINGS": "error", "ICHTRIAGE_LOG_LEVEL": "WARNING"}
    url = engine.url.render_as_string(hide_password=False)

    def requeue_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "node", "admin", "requeue", *args,
                               "--db-url", url], capture_output=True, text=True, env=env,
                              cwd=ROOT, timeout=120)

    done = requeue_cli("--failed", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [{"series_uid": four["failed"], "was": "failed",
                                        "queued": True,
                                        "study_uid": study_of(engine, four["failed"])}]
    done = requeue_cli("--study", "1.2.3.999")
    assert (done.returncode, done.stderr.strip()) == (
        3, "ichtriage admin requeue: no study 1.2.3.999 in the index")
    done = requeue_cli("--since", "yesterday")
    assert done.returncode == 2 and "not an ISO 8601 time" in done.stderr
    assert queued_locks(engine) == [series_lock(four["failed"])]
