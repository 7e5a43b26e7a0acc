"""The admin's model life cycle through the command line, as real processes: `ichtriage admin
models ...` and `ichtriage admin requeue`, their exit codes and listings; and end to end, a
running node that names the promoted model in its results and SRs, and the old one after a
rollback, without a restart."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pydicom import dcmread
from sqlalchemy import create_engine

from ml.checkpoint import ModelCard, card_path, load_checkpoint, save_checkpoint
from ml.labels import LABELS
from ml.models import build_model
from ml.phantom import write_dataset, write_series
from ml.shipped import shipped_checkpoint
from node.triage.sr import read_triage_sr
from storage.retraining import RetrainingLog
from tests import peers
from tests.nodeproc import NodeProcess, running_node, wait_for

ROOT = Path(__file__).resolve().parents[1]


def ichtriage(*args: str | Path, check_rc: int | None = 0) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "error", "ICHTRIAGE_LOG_LEVEL": "WARNING"}
    done = subprocess.run([sys.executable, "-m", "node", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=240, cwd=ROOT)
    if check_rc is not None:
        assert done.returncode == check_rc, f"rc {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def models(data: Path, *args: str | Path, rc: int = 0) -> subprocess.CompletedProcess[str]:
    return ichtriage("admin", "models", *args, "--data-dir", data, check_rc=rc)


def listing(data: Path) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = json.loads(models(data, "list", "--json").stdout)
    return rows


def recalibrated(source: Path, out: Path, *, any_threshold: float) -> Path:
    """The shipped model with its thresholds moved: a legitimate new card (a recalibration),
    saved through ml.checkpoint as a new checkpoint."""
    model, card = load_checkpoint(source)
    thresholds = {**card.thresholds, "any": any_threshold}
    new = ModelCard.from_dict({**card.to_dict(), "thresholds": thresholds, "sha256": "",
                               "created_at": "", "code_version": "",
                               "training_data": card.training_data + "; thresholds moved in "
                                                                     "a test"})
    save_checkpoint(out, model, new)
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("tiny")
    paths = []
    for seed in range(2):
        torch.manual_seed(seed)
        card = ModelCard.new("ichnet", windows=("brain", "subdural", "bone"), input_size=32,
                             training_data=f"random weights, seed {seed}; CLI test")
        model = build_model("ichnet", in_channels=card.in_channels, input_size=32)
        save_checkpoint(folder / f"tiny{seed}.pt", model, card)
        paths.append(folder / f"tiny{seed}.pt")
    return paths


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "var"
    ichtriage("db", "upgrade", "--data-dir", folder)
    return folder


def test_import_promote_rollback_retire_and_their_listings(data: Path, tiny: list[Path]) -> None:
    assert "no model is registered yet" in models(data, "list").stdout
    out = models(data, "import", tiny[0], "--name", "first", "--reason", "baseline",
                 "--by", "alice").stdout
    assert out.startswith("registered first ") and "as candidate" in out
    models(data, "import", tiny[1], "--name", "second", "--version", "2.0", "--activate")
    assert [(m["name"], m["state"], m["version"]) for m in listing(data)] == [
        ("first", "candidate", json.loads(card_path(tiny[0]).read_text())["sha256"][:12]),
        ("second", "active", "2.0")]
    models(data, "promote", "first", "--reason", "better AUC", "--by", "bob")
    (first,) = [m for m in listing(data) if m["name"] == "first"]
    assert (first["state"], first["promoted_by"], first["reason"]) == ("active", "bob",
                                                                      "better AUC")
    table = models(data, "list").stdout.splitlines()
    assert table[0].split()[:4] == ["NAME", "VERSION", "ARCHITECTURE", "STATE"]
    assert any(line.split()[0] == "first" and "active" in line.split() for line in table[2:])
    assert "rolled back: second 2.0" in models(data, "rollback", "--by", "carol").stdout
    models(data, "retire", "first", "--reason", "worse on the held-out set", "--by", "dave")
    shown = json.loads(models(data, "show", "first", "--json").stdout)
    assert shown["state"] == "retired" and shown["card"]["architecture"] == "ichnet"
    assert [(d["action"], d["to"], d["actor"]) for d in shown["decisions"]] == [
        ("import", "candidate", "alice"), ("promote", "active", "bob"),
        ("demote", "candidate", "carol"), ("retire", "retired", "dave")]
    text = models(data, "show", "first").stdout
    assert "worse on the held-out set" in text and "decisions:" in text


BAD = [  # (arguments, exit code, what the one line of stderr says)
    (("promote", "nope"), 3, "no model named 'nope'"),
    (("retire", "nope"), 3, "no model named 'nope'"),
    (("show", "nope"), 3, "no model named 'nope'"),
    (("retire", "first"), 4, "refused: first is the active model"),
    (("promote", "first"), 4, "refused: first is the active model already"),
    (("rollback",), 4, "refused: first has no earlier active model"),
    (("import", "MISSING"), 2, "checkpoint not found"),
    (("import", "CORRUPT"), 2, "cannot read checkpoint"),
    (("import", "FIRST"), 4, "refused: .* is registered already, as 'first'"),
    (("import", "SECOND", "--name", "bad name"), 2, "name: 'bad name'"),
]


def test_bad_input_is_a_clear_error_an_exit_code_and_no_change(
        data: Path, tiny: list[Path], tmp_path: Path) -> None:
    models(data, "import", tiny[0], "--name", "first", "--activate")
    (tmp_path / "corrupt.pt").write_bytes(tiny[1].read_bytes()[:3000])
    files = {"MISSING": tmp_path / "missing.pt", "CORRUPT": tmp_path / "corrupt.pt",
             "FIRST": tiny[0], "SECOND": tiny[1]}
    before = listing(data)
    stored = sorted((data / "models").iterdir())
    for args, rc, message in BAD:
        done = models(data, *[str(files.get(a, a)) for a in args], rc=rc)
        assert done.stdout == "", args
        (line,) = done.stderr.strip().splitlines()  # one line, no traceback
        assert re.search(message, line), (args, line)
    assert listing(data) == before
    assert sorted((data / "models").iterdir()) == stored


def test_a_missing_database_is_exit_1_and_creates_nothing(tmp_path: Path) -> None:
    done = models(tmp_path / "typo", "list", rc=1)
    assert "no database at" in done.stderr
    assert not (tmp_path / "typo").exists()


def sr_of(node: NodeProcess, sr_uid: str) -> tuple[str, str, dict[str, tuple[float, bool]]]:
    """(ManufacturerModelName, SoftwareVersions, per-label reading) of an SR in the node."""
    ((path,),) = node.query(f"select file_path from instance where sop_uid = '{sr_uid}'")
    ds = dcmread(node.data_dir / "data" / str(path))
    return str(ds.ManufacturerModelName), str(ds.SoftwareVersions), read_triage_sr(ds)


def result_of(node: NodeProcess, series_uid: str) -> tuple[object, ...]:
    sql = ("select r.model_name, r.model_version, m.name, r.sr_sop_uid from triage_result r "
           "join series s on s.id = r.series_pk left join model m on m.id = r.model_pk "
           f"where s.series_uid = '{series_uid}'")
    wait_for(lambda: node.query(sql), timeout=180, what=f"a result on {series_uid}")
    (row,) = node.query(sql)
    return row


@pytest.mark.slow
@peers.needs(peers.have_dcmtk(), "DCMTK")
def test_promote_then_rollback_on_a_running_node(tmp_path: Path) -> None:
    """The life cycle end to end: the demo model registered on first start; a second model
    imported and promoted while the node runs; the next study's result and SR name it (and
    its calls are its own); a rollback, and the next one names the demo again."""
    second = recalibrated(shipped_checkpoint(), tmp_path / "recalibrated.pt", any_threshold=0.0)
    first = write_series(tmp_path / "a", seed=931, slices=16, size=512)
    then = write_series(tmp_path / "b", seed=902, slices=24, size=512)  # no bleed
    with running_node(tmp_path / "node", workers=1) as node:
        assert "model demo " in node.log_text()  # the ready line names the registry entry
        data = node.data_dir
        assert [(m["name"], m["state"]) for m in listing(data)] == [("demo", "active")]
        models(data, "import", second, "--name", "recalibrated", "--version", "2")
        models(data, "promote", "recalibrated", "--reason", "any called at 0.0 (test)")

        sent = peers.run_storescu(tmp_path / "a", node.port, aet="CT1", called_aet="ICHTRIAGE")
        assert sent.returncode == 0, sent.stderr
        name, version, entry, sr_uid = result_of(node, first.series_uid)
        assert (name, version, entry) == ("recalibrated", "2", "recalibrated")
        model_name, software, reading = sr_of(node, str(sr_uid))
        assert (model_name, software) == ("recalibrated", "2")
        assert reading["any"][1] is True  # threshold 0: its own call, not the demo's

        assert "rolled back: demo" in models(data, "rollback", "--reason", "test").stdout
        sent = peers.run_storescu(tmp_path / "b", node.port, aet="CT1", called_aet="ICHTRIAGE")
        assert sent.returncode == 0, sent.stderr
        name, version, entry, sr_uid = result_of(node, then.series_uid)
        demo = next(m for m in listing(data) if m["name"] == "demo")
        assert (name, version, entry) == ("demo", demo["version"], "demo")
        model_name, software, reading = sr_of(node, str(sr_uid))
        assert (model_name, software) == ("demo", demo["version"])
        assert reading["any"][1] is False and set(reading) == set(LABELS)
        assert node.proc.poll() is None  # no restart


def test_evaluate_takes_a_registry_name_and_defaults_to_the_active_model(
        data: Path, tiny: list[Path], tmp_path: Path) -> None:
    labels = write_dataset(tmp_path / "set", studies=2, seed=5, slices=6, size=64)
    models(data, "import", tiny[0], "--name", "first")
    models(data, "import", tiny[1], "--name", "second", "--activate")
    files = {m["name"]: m["file"] for m in listing(data)}

    def evaluated(*model: str) -> object:
        out = ichtriage("admin", "evaluate", *model, "--data-dir", data, "--dicom-dir",
                        tmp_path / "set", "--labels", labels, "--json", "--device", "cpu").stdout
        return json.loads(out)["model"]["path"]

    assert evaluated("--model", "first") == files["first"]
    assert evaluated() == files["second"]
    done = ichtriage("admin", "evaluate", "--model", "nope", "--data-dir", data, "--dicom-dir",
                     tmp_path / "set", "--labels", labels, check_rc=2)
    assert "no model named 'nope'" in done.stderr


def test_the_gate_promotes_the_better_and_keeps_a_zero_step_candidate_with_its_reason(
        data: Path, tiny: list[Path], tmp_path: Path) -> None:
    held_out = tmp_path / "held-out"
    labels = write_dataset(held_out, studies=4, seed=21, slices=8, size=512,
                           positive_fraction=0.5)
    models(data, "import", tiny[0], "--name", "zero-step", "--activate")  # random weights
    models(data, "import", shipped_checkpoint(), "--name", "demo")

    def gate(name: str, rc: int) -> dict[str, object]:
        done = models(data, "gate", name, "--dicom-dir", held_out, "--labels", labels,
                      "--device", "cpu", "--json", "--by", "admin", rc=rc)
        decision: dict[str, object] = json.loads(done.stdout)
        return decision

    promoted = gate("demo", 0)  # trained vs untrained: better, sensitivity held
    assert promoted["promote"] is True and promoted["active"] == "zero-step"
    assert [(m["name"], m["state"]) for m in listing(data)] == [("zero-step", "candidate"),
                                                                ("demo", "active")]
    models(data, "import", tiny[1], "--name", "zero-step-2")  # a zero-step candidate
    refused = gate("zero-step-2", 4)
    assert refused["promote"] is False and "is not better than the active model's" in str(
        refused["reason"])
    rows = {m["name"]: m for m in listing(data)}
    assert rows["zero-step-2"]["state"] == "candidate" and rows["demo"]["state"] == "active"
    assert rows["zero-step-2"]["reason"] == refused["reason"]  # shown by `models list`
    assert "is not better than" in models(data, "list").stdout
    decisions = json.loads(models(data, "show", "zero-step-2", "--json").stdout)["decisions"]
    assert [(d["action"], d["actor"], d["reason"]) for d in decisions][-1] == (
        "gate", "admin", refused["reason"])


def test_admin_train_registers_its_best_checkpoint_as_a_candidate(data: Path,
                                                                  tmp_path: Path) -> None:
    labels = write_dataset(tmp_path / "set", studies=4, seed=7, slices=6, size=64,
                           positive_fraction=0.75)
    out = ichtriage("admin", "train", "--arch", "ichnet", "--dicom-dir", tmp_path / "set",
                    "--labels", labels, "--out", tmp_path / "run", "--epochs", 1,
                    "--input-size", 32, "--batch-size", 8, "--val-fraction", 0.25, "--seed", 3,
                    "--device", "cpu", "--register", "trained", "--data-dir", data).stdout
    assert "registered trained " in out
    (entry,) = listing(data)
    assert (entry["name"], entry["state"], entry["architecture"]) == (
        "trained", "candidate", "ichnet")
    assert str(labels) in str(entry["training_data"]) and entry["metrics"]
    assert entry["source"] == str(tmp_path / "run" / "best.pt")


def test_admin_retrain_trains_registers_gates_and_records_under_the_lock(
        data: Path, tmp_path: Path) -> None:
    labels = write_dataset(tmp_path / "set", studies=4, seed=7, slices=6, size=64,
                           positive_fraction=0.75)
    held = write_dataset(tmp_path / "held", studies=2, seed=8, slices=6, size=512,
                         positive_fraction=0.5)
    models(data, "import", shipped_checkpoint(), "--name", "demo", "--activate")
    retrain = ("admin", "retrain", "--arch", "ichnet", "--dicom-dir", tmp_path / "set",
               "--labels", labels, "--out", tmp_path / "run", "--epochs", 1, "--input-size", 32,
               "--batch-size", 8, "--val-fraction", 0.25, "--seed", 3, "--device", "cpu",
               "--heldout-dir", tmp_path / "held", "--heldout-labels", held,
               "--name", "nightly", "--data-dir", data)
    engine = create_engine(f"sqlite:///{data / 'ichtriage.db'}")
    try:
        log = RetrainingLog(engine)
        busy = log.start(f"{socket.gethostname()}:{os.getpid()}", alive=lambda owner: True)
        done = ichtriage(*retrain, check_rc=4)  # this test's process holds the lock: refused
        assert "refused: a retraining is running by" in done.stderr
        assert [m["name"] for m in listing(data)] == ["demo"]  # nothing trained or registered
        log.finish(busy, ok=False, outcome="released by the test")

        out = ichtriage(*retrain, check_rc=4).stdout  # one epoch on 4 studies: not better
        assert "nightly vs demo: kept as a candidate: gate on 2 held-out series" in out
        rows = {m["name"]: m for m in listing(data)}
        assert rows["nightly"]["state"] == "candidate" and rows["demo"]["state"] == "active"
        last = log.runs()[-1]
        assert (last.status, last.candidate) == ("done", "nightly")
        assert last.outcome == rows["nightly"]["reason"]
    finally:
        engine.dispose()
