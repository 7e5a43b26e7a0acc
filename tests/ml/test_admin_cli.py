"""`ichtriage admin` end to end, as an operator runs it: real processes, tiny phantoms."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
import torch

from ml.checkpoint import FIELD_OF_VIEW_MM, read_checkpoint
from ml.labels import LABELS, SUBTYPES
from ml.phantom import STYLES
from ml.shipped import shipped_checkpoint
from ml.train import LR_FLOOR, LR_SCHEDULES
from node.cli import admin as admin_cli

STUDIES, SLICES, SIZE, INPUT = 4, 6, 64, 32


def admin(*args: str | Path, cwd: Path | None = None) -> str:
    """Run `python -m node admin ...` with warnings as errors; return stdout, fail on rc != 0."""
    env = {**os.environ, "PYTHONWARNINGS": "error", "ICHTRIAGE_LOG_LEVEL": "WARNING"}
    done = subprocess.run(
        [sys.executable, "-m", "node", "admin", *map(str, args)], capture_output=True, text=True,
        env=env, timeout=240, cwd=cwd or Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert done.returncode == 0, f"rc {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("admin") / "data"
    stdout = admin("phantoms", "--out", out, "--studies", STUDIES, "--seed", 7,
                   "--slices", SLICES, "--size", SIZE, "--positive-fraction", 0.75)  # fmt: skip
    assert str(out / "labels.csv") in stdout
    return out


@pytest.fixture(scope="module")
def trained(phantoms: Path) -> tuple[Path, str]:
    out = phantoms.parent / "run"
    stdout = admin("train", "--arch", "ichnet", "--dicom-dir", phantoms,
                   "--labels", phantoms / "labels.csv", "--out", out, "--epochs", 1,
                   "--input-size", INPUT, "--batch-size", 8, "--val-fraction", 0.25,
                   "--seed", 3, "--device", "cpu", "--lr-schedule", "cosine")  # fmt: skip
    return out / "best.pt", stdout


def test_phantoms_writes_dicom_and_rsna_labels(phantoms: Path) -> None:
    files = sorted(phantoms.rglob("*.dcm"))
    assert len(files) == STUDIES * SLICES
    assert len({f.parent for f in files}) == STUDIES  # <Study>/<Series>/ID_*.dcm
    ds = pydicom.dcmread(files[0])
    assert (ds.Rows, ds.Columns) == (SIZE, SIZE) and ds.Modality == "CT"
    with (phantoms / "labels.csv").open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["ID", "Label"] and len(rows) == 1 + len(files) * len(LABELS)
    ids = {row[0].rsplit("_", 1)[0] for row in rows[1:]}
    assert ids == {f.stem for f in files}
    assert {row[0].rsplit("_", 1)[1] for row in rows[1:]} == set(LABELS)
    assert any(row[1] == "1" for row in rows[1:] if row[0].endswith("_any"))


def test_train_writes_a_carded_checkpoint(trained: tuple[Path, str], phantoms: Path) -> None:
    checkpoint, stdout = trained
    card, _ = read_checkpoint(checkpoint)  # sha256 and fit verified
    assert card.architecture == "ichnet" and card.labels == LABELS
    assert (card.input_size, card.context, card.in_channels) == (INPUT, 1, 9)
    assert card.windows == ("brain", "subdural", "bone")
    assert str(phantoms / "labels.csv") in card.training_data and "seed 3" in card.training_data
    assert card.metrics["epochs"] == 1 and "weighted_log_loss" in card.metrics["validation"]
    assert json.loads(checkpoint.with_name("best.pt.json").read_text())["sha256"] == card.sha256
    assert f"checkpoint: {checkpoint}" in stdout and "weighted log loss" in stdout
    state = torch.load(checkpoint.with_name("last.train.pt"), weights_only=True)
    assert state["history"][-1]["lr"] == pytest.approx(1e-3 * LR_FLOOR)  # cosine, to its end


def test_the_cli_offers_the_trainer_s_schedules_styles_and_field_of_view_range() -> None:
    assert admin_cli.LR_SCHEDULES == LR_SCHEDULES
    assert admin_cli.FIELD_OF_VIEW_MM == FIELD_OF_VIEW_MM
    assert set(admin_cli.PHANTOM_STYLES) == set(STYLES)


def test_evaluate_json_is_one_object_with_both_levels(
    trained: tuple[Path, str], phantoms: Path
) -> None:
    checkpoint, _ = trained
    roc = phantoms.parent / "roc.png"
    stdout = admin("evaluate", "--model", checkpoint, "--dicom-dir", phantoms,
                   "--labels", phantoms / "labels.csv", "--json", "--roc", roc)  # fmt: skip
    report = json.loads(stdout)  # nothing but one JSON object on stdout
    assert set(report) >= {"model", "data", "image", "series"}
    assert report["model"]["architecture"] == "ichnet"
    assert report["model"]["path"] == str(checkpoint)
    assert report["data"] == report["data"] | {"images": STUDIES * SLICES, "series": STUDIES,
                                                "skipped": 0}  # fmt: skip
    for level, n in (("image", STUDIES * SLICES), ("series", STUDIES)):
        metrics = report[level]
        assert metrics["n"] == n
        assert isinstance(metrics["weighted_log_loss"], float)
        assert set(metrics["auc"]) == {"micro", *LABELS}
        assert metrics["tp"] + metrics["fp"] + metrics["tn"] + metrics["fn"] == n * len(LABELS)
        for label in LABELS:
            assert {"threshold", "sensitivity", "specificity"} <= set(metrics["per_label"][label])
    assert report["image"]["auc"]["any"] is not None  # both classes present
    assert roc.read_bytes()[:4] == b"\x89PNG"


def test_evaluate_demo_names_the_shipped_model(phantoms: Path) -> None:
    stdout = admin("evaluate", "--model", "demo", "--dicom-dir", phantoms,
                   "--labels", phantoms / "labels.csv")  # fmt: skip
    assert f"checkpoint: {shipped_checkpoint()}" in stdout
    assert "weighted log loss" in stdout and "subdural" in stdout


def test_compare_tabulates_one_row_per_architecture(phantoms: Path) -> None:
    out = phantoms.parent / "compare"
    other = phantoms.parent / "polar"  # another phantom style, none of it trained on
    admin("phantoms", "--out", other, "--studies", 2, "--seed", 8, "--slices", SLICES,
          "--size", SIZE, "--style", "polar")  # fmt: skip
    stdout = admin("compare", "--archs", "vanilla,ichnet", "--dicom-dir", phantoms,
                   "--labels", phantoms / "labels.csv", "--out", out, "--epochs", 1,
                   "--input-size", INPUT, "--val-fraction", 0.25, "--seed", 3,
                   "--test-dicom-dir", other, "--test-labels", other / "labels.csv")  # fmt: skip
    lines = (out / "compare.md").read_text().splitlines()
    assert lines[0].startswith("| model | input |") and "weighted log loss" in lines[0]
    assert [line.split("|")[1].strip() for line in lines[2:4]] == ["vanilla", "ichnet"]
    assert not lines[4].startswith("|")
    # the second table: the same models scored on the other style
    n_other = len(list(other.rglob("*.dcm")))
    heading = lines.index(f"The same models on {other} ({n_other} slices) (image level, the "
                          "same columns):")
    assert [line.split("|")[1].strip() for line in lines[heading + 4:heading + 6]] == [
        "vanilla", "ichnet"]  # fmt: skip
    with (out / "compare-test.csv").open() as f:
        tested = list(csv.DictReader(f))
    assert [r["architecture"] for r in tested] == ["vanilla", "ichnet"]
    for row in tested:  # every decision of every slice of the other style, at 0.5
        assert sum(int(row[k]) for k in ("tp", "tn", "fp", "fn")) == n_other * len(LABELS)
    with (out / "compare.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["architecture"] for r in rows] == ["vanilla", "ichnet"]
    assert {"loss", "accuracy", "tp", "tn", "fp", "fn", "auc", "weighted_log_loss"} <= set(rows[0])
    assert {f"auc_{label}" for label in LABELS} <= set(rows[0])
    assert int(rows[0]["tp"]) + int(rows[0]["fn"]) > 0
    assert "| vanilla |" in stdout
    for name in ("vanilla", "ichnet"):
        assert read_checkpoint(out / name / "best.pt")[0].architecture == name


def test_demo_model_command_writes_a_synthetic_card(tmp_path: Path) -> None:
    out = tmp_path / "demo.pt"
    stdout = admin("demo-model", "--out", out, "--seed", 5, "--studies", 4, "--slices", 4,
                   "--input-size", INPUT, "--epochs", 1, "--series-epochs", 1,
                   "--style", "randomized", "--classic-studies", 2,
                   "--work-dir", tmp_path / "work")  # fmt: skip
    card, _ = read_checkpoint(out)
    assert card.architecture == "ichnet_seq" and card.input_size == INPUT
    assert "synthetic" in card.training_data and "seed 5" in card.training_data
    assert ("ichtriage admin demo-model --seed 5 --studies 4" in card.training_data
            and "--classic-studies 2" in card.training_data)  # randomized: the default style
    assert "and 2 classic studies of 4 slices, phantom seed 5005" in card.training_data
    # both styles' slices were trained on: 4 randomized studies of 3-6 slices, 2 classic of 4
    recipe = card.metrics["recipe"]
    assert recipe["classic_studies"] == 2 and recipe["style"] == "randomized"
    classic = (tmp_path / "work" / "phantoms-classic" / "labels.csv").read_text().splitlines()
    assert len(classic) == 1 + 2 * 4 * 6  # header, 2 studies x 4 slices x 6 labels
    assert "NOT FOR CLINICAL USE" in card.intended_use
    assert card.metrics["recipe"]["seed"] == 5 and "slice_stage" in card.metrics
    assert set(card.thresholds) == set(LABELS) and len(SUBTYPES) == 5
    assert f"checkpoint: {out}" in stdout
