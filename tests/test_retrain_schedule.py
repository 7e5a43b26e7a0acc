"""Scheduled retraining: off by default, its settings checked at load, and a tick that runs
`admin retrain` in its own process and leaves its run in the database."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import create_engine

from ml.phantom import write_dataset
from ml.shipped import shipped_checkpoint
from node.config import ConfigError, load_settings
from node.retraining import JOB_ID, schedule_retraining
from storage.registry import ModelRegistry
from storage.retraining import RetrainingLog

ROOT = Path(__file__).resolve().parents[1]
PATHS = {"ICHTRIAGE_RETRAIN_DICOM_DIR": "/d", "ICHTRIAGE_RETRAIN_LABELS": "/l.csv",
         "ICHTRIAGE_RETRAIN_HELDOUT_DIR": "/h", "ICHTRIAGE_RETRAIN_HELDOUT_LABELS": "/h.csv"}


def test_off_by_default() -> None:
    settings = load_settings(env={})
    scheduler = BackgroundScheduler()
    assert settings.retrain_cron == "" and not schedule_retraining(scheduler, settings)
    assert scheduler.get_jobs() == []


@pytest.mark.parametrize(("env", "match"), [
    ({"ICHTRIAGE_RETRAIN_CRON": "0 2 * * 0"}, "retrain_dicom_dir, retrain_labels, "
                                              "retrain_heldout_dir, retrain_heldout_labels"),
    ({"ICHTRIAGE_RETRAIN_CRON": "nightly", **PATHS}, "not a crontab line"),
    ({"ICHTRIAGE_RETRAIN_METRIC": "accuracy"}, "retrain_metric"),
    ({"ICHTRIAGE_RETRAIN_EPOCHS": "0"}, "retrain_epochs"),
], ids=["paths-missing", "not-cron", "metric", "epochs"])
def test_bad_retraining_settings_are_named(env: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_settings(env=env)


def test_a_cron_line_becomes_the_schedule() -> None:
    scheduler = BackgroundScheduler()
    settings = load_settings(env={"ICHTRIAGE_RETRAIN_CRON": "30 2 * * 0", **PATHS})
    assert schedule_retraining(scheduler, settings)
    fields = {f.name: str(f) for f in scheduler.get_job(JOB_ID).trigger.fields}
    assert (fields["minute"], fields["hour"], fields["day_of_week"]) == ("30", "2", "0")
    with pytest.raises(ConfigError, match="retrain_cron: '99 2 \\* \\* 0'"):
        schedule_retraining(BackgroundScheduler(), load_settings(
            env={"ICHTRIAGE_RETRAIN_CRON": "99 2 * * 0", **PATHS}))


def test_a_tick_runs_a_retraining_and_records_it(tmp_path: Path) -> None:
    data = tmp_path / "var"
    env = {**os.environ, "ICHTRIAGE_LOG_LEVEL": "WARNING"}
    for args in (["db", "upgrade"], ["admin", "models", "import", str(shipped_checkpoint()),
                                     "--name", "demo", "--activate"]):
        subprocess.run([sys.executable, "-m", "node", *args, "--data-dir", str(data)],
                       check=True, capture_output=True, env=env, cwd=ROOT, timeout=240)
    labels = write_dataset(tmp_path / "set", studies=4, seed=7, slices=6, size=64)
    held = write_dataset(tmp_path / "held", studies=2, seed=8, slices=6, size=512)
    settings = load_settings(env={
        "ICHTRIAGE_DATA_DIR": str(data), "ICHTRIAGE_RETRAIN_CRON": "0 3 * * *",
        "ICHTRIAGE_RETRAIN_DICOM_DIR": str(tmp_path / "set"),
        "ICHTRIAGE_RETRAIN_LABELS": str(labels),
        "ICHTRIAGE_RETRAIN_HELDOUT_DIR": str(tmp_path / "held"),
        "ICHTRIAGE_RETRAIN_HELDOUT_LABELS": str(held), "ICHTRIAGE_RETRAIN_EPOCHS": "1",
        "ICHTRIAGE_LOG_LEVEL": "WARNING"})
    scheduler = BackgroundScheduler()
    schedule_retraining(scheduler, settings)
    scheduler.get_job(JOB_ID).func()  # the tick, run now rather than at 03:00
    engine = create_engine(settings.database_url)
    try:
        (run,) = RetrainingLog(engine).runs()
        assert run.status == "done" and run.candidate.startswith("retrained-")
        entry = ModelRegistry(engine, settings.models_dir).get(run.candidate)
        assert entry.reason == run.outcome and run.outcome.startswith("gate on 2 held-out")
        assert entry.architecture == "ichnet"
    finally:
        engine.dispose()


def test_a_node_with_an_unreadable_schedule_does_not_start(tmp_path: Path) -> None:
    env = {**os.environ, "ICHTRIAGE_RETRAIN_CRON": "99 2 * * 0", **PATHS}
    done = subprocess.run([sys.executable, "-m", "node", "serve", "--port", "0",
                           "--http-port", "0", "--workers", "0", "--data-dir",
                           str(tmp_path / "var")], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=120)
    output = done.stdout + done.stderr
    errors = [line for line in output.splitlines() if " ERROR " in line]
    assert done.returncode == 1 and len(errors) == 1, output
    assert "cannot start: retrain_cron '99 2 * * 0'" in errors[0]
    assert "ready:" not in output and "Traceback" not in output
