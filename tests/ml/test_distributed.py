"""`ichtriage admin train --nproc 2`: two torchrun ranks with gloo on this CPU train one model
(DistributedDataParallel), build the cache together, and rank 0 alone writes the checkpoint."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ml.cache import DATA_FILE, INDEX_FILE
from ml.checkpoint import load_checkpoint, read_checkpoint, weights_sha256
from ml.distributed import Distributed, from_environment
from ml.errors import ModelError
from ml.phantom import write_dataset
from node.cli.ddp import is_rank, rank_argv
from node.cli.main import build_parser, settings_from

ROOT = Path(__file__).resolve().parents[2]


def test_torchrun_environment_is_read() -> None:
    assert from_environment({}) is None and from_environment({"WORLD_SIZE": "1"}) is None
    ranks = from_environment({"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "0"})
    assert ranks == Distributed(rank=2, world_size=4, local_rank=0) and not ranks.is_main
    with pytest.raises(ModelError, match="RANK 5 outside WORLD_SIZE 2"):
        from_environment({"WORLD_SIZE": "2", "RANK": "5"})
    assert is_rank({"WORLD_SIZE": "2"}) and not is_rank({}) and not is_rank({"WORLD_SIZE": "1"})


def test_each_rank_gets_the_options_given() -> None:
    argv = ["admin", "train", "--arch", "ichnet", "--dicom-dir", "/d", "--labels", "/l.csv",
            "--out", "/o", "--epochs", "2", "--input-size", "32", "--workers", "2", "--augment",
            "--windows", "brain,bone", "--nproc", "3", "--register", "x", "--device", "cpu"]
    args = build_parser().parse_args(argv)
    again = build_parser().parse_args(rank_argv(args, settings_from(args)))
    for name in ("arch", "dicom_dir", "labels", "out", "epochs", "input_size", "loader_workers",
                 "augment", "windows", "device", "batch_size", "seed", "val_fraction"):
        assert getattr(again, name) == getattr(args, name), name
    assert again.nproc == 1 and again.register is None  # the launcher registers, once


def test_two_gloo_ranks_end_with_one_model_written_once(tmp_path: Path) -> None:
    labels = write_dataset(tmp_path / "data", studies=4, seed=7, slices=6, size=64,
                           positive_fraction=0.75)
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    done = subprocess.run(
        [sys.executable, "-m", "node", "admin", "train", "--nproc", "2", "--arch", "ichnet",
         "--dicom-dir", str(tmp_path / "data"), "--labels", str(labels), "--out", str(out),
         "--epochs", "1", "--input-size", "32", "--batch-size", "8", "--val-fraction", "0.25",
         "--seed", "3", "--device", "cpu", "--log-level", "INFO"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=240)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    # each rank says what it ended with, on its own
    ranks = dict(re.findall(r"rank (\d) of 2: final weights sha256 ([0-9a-f]{64})", done.stderr))
    assert set(ranks) == {"0", "1"}, done.stderr
    assert ranks["0"] == ranks["1"]
    assert len(re.findall(r"rank \d of 2 on cpu \(gloo\)", done.stderr)) == 2
    # rank 0 wrote the last epoch's weights, the ones both ranks hold; once, and they load
    _, last = read_checkpoint(out / "last.pt")
    assert weights_sha256(last) == ranks["0"]
    assert done.stdout.count("checkpoint: ") == 1 and done.stdout.count("epoch 1:") == 1
    model, card = load_checkpoint(out / "best.pt")
    assert card.metrics["distributed"] == {"world_size": 2, "backend": "gloo",
                                           "rank_weights_sha256": [ranks["0"], ranks["1"]]}
    assert card.metrics["epochs"] == 1 and card.input_size == 32
    assert not list(out.glob("**/*.partial")) and not list(out.glob("**/*shard*"))
    for part in ("train", "val"):  # the cache the ranks built together
        folder = out / "cache" / "brain-subdural-bone-32px" / part
        assert (folder / INDEX_FILE).is_file() and (folder / DATA_FILE).is_file()
