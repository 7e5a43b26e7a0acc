"""Scheduled retraining: off by default, its settings checked at load, and a tick that runs
`admin retrain` in its own process and leaves its run in the database."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import create_engine

from ml.labels import LABELS
from ml.phantom import write_dataset
from ml.shipped import shipped_checkpoint
from node.config import ConfigError, Settings, load_settings
from node.retraining import FINISHED, JOB_ID, schedule_retraining, tick_folder
from storage.feedback import FeedbackStore
from storage.files import FileStore
from storage.registry import ModelRegistry
from storage.retraining import RetrainingLog
from tests.webdata import add_study

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
    ({"ICHTRIAGE_RETRAIN_MIN_NEW_LABELS": "-1"}, "retrain_min_new_labels must be >= 0"),
], ids=["paths-missing", "not-cron", "metric", "epochs", "min-labels"])
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


def tick(settings: Settings, min_new_labels: int) -> None:
    """The scheduled job, run now rather than at 03:00."""
    scheduler = BackgroundScheduler()
    schedule_retraining(scheduler, dataclasses.replace(
        settings, retrain_min_new_labels=min_new_labels))
    scheduler.get_job(JOB_ID).func()


def test_a_tick_waits_for_new_feedback_then_trains_on_it_too(tmp_path: Path) -> None:
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
    engine = create_engine(settings.database_url)
    try:
        # two studies the node read, which a radiologist read as negative: 12 labels
        for n in (1, 2):
            ref = add_study(engine, FileStore(settings.files_dir), n, slices=5, p_any=0.3)
            FeedbackStore(engine).add(ref.study_uid, dict.fromkeys(LABELS, False), author="r",
                                      token_pk=None, result_pk=ref.result_pk)
        log = RetrainingLog(engine)
        tick(settings, 13)  # one label short: nothing starts
        assert log.runs() == []
        assert [e.name for e in ModelRegistry(engine, settings.models_dir).entries()] == ["demo"]
        tick(settings, 12)
        (run,) = log.runs()
        assert run.status == "done" and run.candidate.startswith("retrained-")
        entry = ModelRegistry(engine, settings.models_dir).get(run.candidate)
        assert entry.reason == run.outcome and run.outcome.startswith("gate on 2 held-out")
        assert entry.architecture == "ichnet"
        # it trained on the feedback export as well as on the configured set
        (export,) = (data / "retraining").glob("*/feedback/labels.csv")
        rows = export.read_text().splitlines()
        assert len(rows) == 1 + 2 * 5 * len(LABELS)
        assert f"+ {export} over {export.parent / 'dicom'}" in entry.training_data
        assert str(labels) in entry.training_data
        assert len(list((export.parent / "dicom").rglob("*.dcm"))) == 10
        exported = {row.split(",")[0].rsplit("_", 1)[0] for row in rows[1:]}
        cached = [i for index in export.parent.parent.glob("cache/*/*/index.json")
                  for i in json.loads(index.read_text())["image_ids"]]
        assert len(exported) == 10 and exported <= set(cached)  # decoded, trained or validated
        assert FeedbackStore(engine).count_since(log.last_done_start()) == 0
        # a run that was killed mid-way is continued at the next tick, in its folder
        (folder,) = (data / "retraining").iterdir()
        assert tick_folder(data / "retraining")[1] is False  # it ended: the next starts anew
        (folder / FINISHED).unlink()  # as if the node had been killed during the run
        assert tick_folder(data / "retraining") == (folder, True)
        state = folder / "last.train.pt"
        (first,) = torch.load(state, map_location="cpu", weights_only=True)["history"]
        tick(dataclasses.replace(settings, retrain_epochs=2), 0)
        assert [p.name for p in (data / "retraining").iterdir()] == [folder.name]
        assert (folder / FINISHED).exists()
        resumed = log.runs()[-1]
        assert resumed.status == "done" and resumed.candidate != run.candidate
        history = torch.load(state, map_location="cpu", weights_only=True)["history"]
        assert len(history) == 2 and history[0] == first  # epoch 1 is the cut-off run's
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


def test_a_tick_without_an_active_model_trains_nothing_and_logs_why(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "var"
    subprocess.run([sys.executable, "-m", "node", "db", "upgrade", "--data-dir", str(data)],
                   check=True, capture_output=True, cwd=ROOT, timeout=120)
    labels = write_dataset(tmp_path / "set", studies=2, seed=7, slices=4, size=64)
    settings = load_settings(env={
        "ICHTRIAGE_DATA_DIR": str(data), "ICHTRIAGE_RETRAIN_CRON": "* * * * *",
        "ICHTRIAGE_RETRAIN_DICOM_DIR": str(tmp_path / "set"),
        "ICHTRIAGE_RETRAIN_LABELS": str(labels),
        "ICHTRIAGE_RETRAIN_HELDOUT_DIR": str(tmp_path / "set"),
        "ICHTRIAGE_RETRAIN_HELDOUT_LABELS": str(labels), "ICHTRIAGE_RETRAIN_EPOCHS": "1",
        "ICHTRIAGE_LOG_LEVEL": "WARNING"})
    with caplog.at_level("INFO", logger="node.retraining"):
        tick(settings, 0)
    ended = [r.getMessage() for r in caplog.records if "retraining ended" in r.getMessage()]
    assert len(ended) == 1 and "(exit 4)" in ended[0], ended
    assert "no model is active to compare a candidate with" in ended[0], ended
    assert not list((data / "retraining").rglob("*.pt"))  # refused before training
    engine = create_engine(settings.database_url)
    try:
        assert RetrainingLog(engine).runs() == []
    finally:
        engine.dispose()
