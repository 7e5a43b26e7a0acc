"""The admin commands' answers to bad input and their audit trail, as real processes: one
line and the documented exit code, never a traceback; `--json` on every listing; every
command-line action that changes state audited with actor `cli:<OS user>`."""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from sqlalchemy import text, update

from ml.checkpoint import ModelCard, save_checkpoint
from ml.labels import LABELS
from ml.models import build_model
from ml.phantom import write_dataset
from ml.rsna import read_labels
from ml.shipped import shipped_checkpoint
from storage.audit import AuditLog
from storage.db import make_engine, upgrade
from storage.files import FileStore
from storage.models import Series, SeriesStatus
from storage.tokens import TokenStore
from tests.webdata import add_study

ROOT = Path(__file__).resolve().parents[1]
ACTOR = f"cli:{getpass.getuser()}"


def ichtriage(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ICHTRIAGE_LOG_LEVEL": "WARNING"}
    return subprocess.run([sys.executable, "-m", "node", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=240, cwd=ROOT)


def one_line(done: subprocess.CompletedProcess[str], rc: int, *words: str) -> str:
    """The command ended with `rc` and said why on one stderr line naming `words`."""
    assert done.returncode == rc, f"rc {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'var' / 'ichtriage.db'}"
    upgrade(url)
    return url


def test_a_bad_token_name_is_one_line_exit_2_and_makes_nothing(url: str) -> None:
    for name in ("", "  ", "x" * 70):
        done = ichtriage("admin", "tokens", "create", "--role", "reader", "--name", name,
                         "--db-url", url)
        one_line(done, 2, "tokens create", "--name", "1-64 characters")
    engine = make_engine(url)
    try:
        assert TokenStore(engine).list() == []
        assert AuditLog(engine).recent() == []
    finally:
        engine.dispose()


def test_tokens_list_json_and_token_actions_audited_as_the_os_user(url: str) -> None:
    made = ichtriage("admin", "tokens", "create", "--role", "admin", "--name", "ops",
                     "--db-url", url)
    assert made.returncode == 0, made.stderr
    assert ichtriage("admin", "tokens", "revoke", "1", "--db-url", url).returncode == 0
    listed = ichtriage("admin", "tokens", "list", "--json", "--db-url", url)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["id"], r["name"], r["role"], r["active"]) for r in rows] == [
        (1, "ops", "admin", False)]
    assert rows[0]["revoked_at"] is not None
    engine = make_engine(url)
    try:
        events = AuditLog(engine).recent()
    finally:
        engine.dispose()
    assert [(e.action, e.actor, e.token_pk) for e in events] == [
        ("token_revoke", ACTOR, 1), ("token_create", ACTOR, 1)]


def test_feedback_export_to_an_unwritable_out_is_one_line_exit_1(url: str,
                                                                tmp_path: Path) -> None:
    a_file = tmp_path / "afile"
    a_file.write_text("kept\n")
    one_line(ichtriage("admin", "feedback", "export", "--out", a_file, "--db-url", url), 1,
             "feedback export", f"--out {a_file}", "File exists")
    assert a_file.read_text() == "kept\n"
    one_line(ichtriage("admin", "feedback", "export", "--out", "/proc/nope", "--db-url", url),
             1, "--out /proc/nope")
    done = ichtriage("admin", "feedback", "export", "--out", tmp_path / "out", "--db-url", url)
    assert done.returncode == 0, done.stderr
    engine = make_engine(url)
    try:
        assert [(e.action, e.actor) for e in AuditLog(engine).recent()] == [
            ("feedback_export", ACTOR)]
    finally:
        engine.dispose()


def test_every_command_taking_device_refuses_a_missing_cuda_before_any_work(
        url: str, tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("ID,Label\n")
    data = ("--dicom-dir", tmp_path, "--labels", labels)
    out = tmp_path / "out"
    commands = {
        "train": ("train", "--arch", "vanilla", *data, "--out", out),
        "evaluate": ("evaluate", "--model", "demo", *data),
        "compare": ("compare", "--archs", "vanilla", *data, "--out", out),
        "retrain": ("retrain", *data, "--out", out, "--heldout-dir", tmp_path,
                    "--heldout-labels", labels, "--db-url", url),
        "models gate": ("models", "gate", "x", *data, "--db-url", url),
        "demo-model": ("demo-model", "--out", out),
    }
    for name, args in commands.items():
        one_line(ichtriage("admin", *args, "--device", "cuda:99"), 1,
                 f"admin {name}: device cuda:99", "CUDA device")
    assert not out.exists()
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM retraining")).scalar_one() == 0
    finally:
        engine.dispose()


def tiny_checkpoint(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    card = ModelCard.new("ichnet", windows=("brain", "subdural", "bone"), input_size=32,
                         training_data=f"random weights, seed {seed}; admin CLI test")
    save_checkpoint(path, build_model("ichnet", in_channels=card.in_channels, input_size=32),
                    card)
    return path


def test_model_changes_are_audited_with_the_model_by_and_reason(url: str,
                                                                tmp_path: Path) -> None:
    one, two = (tiny_checkpoint(tmp_path / f"tiny{seed}.pt", seed) for seed in (1, 2))
    node = ("--db-url", url, "--data-dir", tmp_path / "var")
    steps = [("import", one, "--name", "t1", "--activate", "--by", "alice", "--reason", "first"),
             ("import", two, "--name", "t2"), ("promote", "t2", "--reason", "better"),
             ("rollback",), ("retire", "t2", "--reason", "worse")]
    for step in steps:
        done = ichtriage("admin", "models", *step, *node)
        assert done.returncode == 0, done.stderr
    engine = make_engine(url)
    try:
        events = AuditLog(engine).recent()[::-1]
    finally:
        engine.dispose()
    assert [(e.action, e.actor) for e in events] == [
        ("model_import", ACTOR), ("model_import", ACTOR), ("model_promote", ACTOR),
        ("model_rollback", ACTOR), ("model_retire", ACTOR)]
    details = [e.detail for e in events]
    assert details[0].startswith("t1 ") and details[0].endswith(" as active by alice: first")
    assert details[1].startswith("t2 ") and "as candidate" in details[1]
    assert details[2].startswith("t2 ") and details[2].endswith(": better")
    assert details[3].startswith("t1 ") and "now active" in details[3]
    assert details[4].startswith("t2 ") and details[4].endswith(": worse")


def test_requeue_is_audited_per_study_with_the_operators_reason(url: str,
                                                                tmp_path: Path) -> None:
    engine = make_engine(url)
    try:
        study = add_study(engine, FileStore(tmp_path / "var" / "data"), 7)
        with engine.begin() as conn:
            conn.execute(update(Series).values(status=SeriesStatus.FAILED))
        done = ichtriage("admin", "requeue", "--study", study.study_uid, "--reason", "trial",
                         "--db-url", url)
        assert done.returncode == 0, done.stderr
        events = AuditLog(engine).recent()
    finally:
        engine.dispose()
    assert [(e.action, e.actor, e.study_uid) for e in events] == [
        ("requeue", ACTOR, study.study_uid)]
    assert "was failed" in events[0].detail and events[0].detail.endswith(": trial")
    assert "SECRET" not in events[0].detail and "PID-" not in events[0].detail


def test_labelled_ids_without_images_are_left_out_with_one_warning(url: str,
                                                                   tmp_path: Path) -> None:
    labels = write_dataset(tmp_path / "set", studies=2, seed=3, slices=4, size=64)
    with labels.open("a") as f:  # the full CSV over a subset of its images
        f.writelines(f"ID_zz{n}_{label},0\n" for n in range(5) for label in LABELS)
    tiny = tiny_checkpoint(tmp_path / "tiny.pt", 3)
    node = ("--db-url", url, "--data-dir", tmp_path / "var")
    for args in (("models", "import", shipped_checkpoint(), "--activate"),
                 ("models", "import", tiny, "--name", "tiny")):
        assert ichtriage("admin", *args, *node).returncode == 0
    data = ("--dicom-dir", tmp_path / "set", "--labels", labels, "--device", "cpu")
    for args, rc in ((("evaluate", "--model", tiny, "--json"), 0),
                     (("models", "gate", "tiny", *node), None)):
        done = ichtriage("admin", *args, *data)
        if rc is not None:
            assert done.returncode == rc, done.stderr
        else:  # the gate promotes or keeps its candidate: 0 or 4, both decisions
            assert done.returncode in (0, 4), done.stderr
        warnings = [line for line in done.stderr.splitlines() if "WARNING" in line]
        assert len(warnings) == 1, done.stderr
        assert f"5 of {len(read_labels(labels))} labelled image IDs have no <ID>.dcm under {tmp_path / 'set'}" \
            in warnings[0] and "(first: ID_zz0, ID_zz1, ID_zz2)" in warnings[0], warnings


def test_importing_a_corrupt_checkpoint_says_what_is_wrong_in_one_line(url: str,
                                                                       tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(bytes(range(256)) * 8)
    line = one_line(ichtriage("admin", "models", "import", corrupt, "--db-url", url,
                              "--data-dir", tmp_path / "var"), 2, "models import",
                    f"cannot read checkpoint {corrupt}: not a checkpoint")
    assert "weights_only" not in line
