"""Training loop on tiny synthetic tasks: it learns, resumes exactly and pads series."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from ml.checkpoint import load_checkpoint, read_checkpoint
from ml.labels import LABELS
from ml.metrics import weighted_log_loss
from ml.models import build_model
from ml.train import LR_FLOOR, TrainConfig, WeightedBCEWithLogits, pad_series, train

SIZE = 32


def _image(positive: bool, g: torch.Generator, channels: int) -> torch.Tensor:
    x = torch.rand(channels, SIZE, SIZE, generator=g) * 0.3
    if positive:  # a bright square somewhere: the "bleed"
        r, c = (int(v) for v in torch.randint(0, SIZE - 8, (2,), generator=g))
        x[:, r : r + 8, c : c + 8] += 0.7
    return x


def _target(positive: bool) -> torch.Tensor:
    y = torch.zeros(len(LABELS))
    if positive:
        y[LABELS.index("any")] = y[LABELS.index("subdural")] = 1
    return y


class Squares(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    def __init__(self, n: int, seed: int, channels: int = 3) -> None:
        g = torch.Generator().manual_seed(seed)
        self.items = [(_image(i % 2 == 0, g, channels), _target(i % 2 == 0)) for i in range(n)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.items[i]


class SquareSeries(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Series of 2-5 slices, 9 channels; some slices hold the square."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for i in range(n):
            flags = [(i + k) % 3 == 0 for k in range(2 + i % 4)]
            x = torch.stack([_image(f, g, 9) for f in flags])
            self.items.append((x, torch.stack([_target(f) for f in flags])))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.items[i]


def _config(tmp_path: Path, **changes: object) -> TrainConfig:
    base = TrainConfig(
        checkpoint_dir=tmp_path, architecture="ichnet", context=0, input_size=SIZE, epochs=3,
        batch_size=8, lr=3e-3, seed=0, device="auto", training_data="squares; unit test",
    )  # fmt: skip
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(2)


def test_learns_a_separable_task(tmp_path: Path) -> None:
    epochs_logged: list[int] = []
    result = train(_config(tmp_path), Squares(96, 1), Squares(32, 2), progress=False,
                   log=lambda entry: epochs_logged.append(entry["epoch"]))  # fmt: skip
    assert epochs_logged == [1, 2, 3]
    assert result.metrics.per_label["any"].auc > 0.9
    assert result.metrics.n == 32
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    # the final card carries thresholds chosen on validation and the validation metrics
    _, card = load_checkpoint(result.best_checkpoint)
    assert card == result.card
    assert card.thresholds["any"] != 0.5 and card.thresholds["epidural"] == 0.5
    assert card.metrics["validation"]["per_label"]["any"]["sensitivity"] >= 0.95
    assert card.training_data == "squares; unit test"
    assert card.in_channels == 3 and card.context == 0 and card.input_size == SIZE
    assert result.last_checkpoint.is_file() and result.train_state.is_file()
    assert result.roc_plot.read_bytes()[:4] == b"\x89PNG"


def test_resume_continues_where_it_stopped(tmp_path: Path) -> None:
    data, val = Squares(32, 1), Squares(16, 2)
    straight = train(_config(tmp_path / "a", epochs=2), data, val, progress=False)
    train(_config(tmp_path / "b", epochs=1), data, val, progress=False)
    resumed = train(_config(tmp_path / "b", epochs=2, resume=True), data, val, progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    assert resumed.history[1]["train_loss"] == pytest.approx(straight.history[1]["train_loss"])
    _, weights_a = read_checkpoint(straight.last_checkpoint)
    _, weights_b = read_checkpoint(resumed.last_checkpoint)
    for name, tensor in weights_a.items():
        assert torch.allclose(tensor, weights_b[name], atol=1e-6), name


class _Stopped(Exception):
    """Stands for a crash between two epochs."""


def test_a_cosine_schedule_falls_to_its_floor_and_resumes(tmp_path: Path) -> None:
    """The learning rate per epoch falls along half a cosine from lr to LR_FLOOR * lr; a run
    stopped after two epochs and resumed ends as a straight run does (rates and weights)."""
    data, val = Squares(32, 1), Squares(16, 2)
    straight = train(_config(tmp_path / "a", epochs=4, lr_schedule="cosine"), data, val,
                     progress=False)  # fmt: skip
    rates = [h["lr"] for h in straight.history]  # each for the epoch after it
    expected = [3e-3 * (LR_FLOOR + (1 - LR_FLOOR) * (1 + math.cos(math.pi * k / 4)) / 2)
                for k in range(1, 5)]  # fmt: skip
    assert rates == pytest.approx(expected)
    assert rates[-1] == pytest.approx(3e-3 * LR_FLOOR)
    constant = train(_config(tmp_path / "c", epochs=2), data, val, progress=False)
    assert [h["lr"] for h in constant.history] == [3e-3, 3e-3]
    cosine = _config(tmp_path / "b", epochs=4, lr_schedule="cosine")

    def stop_after_two(entry: dict[str, object]) -> None:
        if entry["epoch"] == 2:
            raise _Stopped

    with pytest.raises(_Stopped):
        train(cosine, data, val, progress=False, log=stop_after_two)
    resumed = train(dataclasses.replace(cosine, resume=True), data, val, progress=False)
    assert [h["lr"] for h in resumed.history] == pytest.approx(rates)
    _, weights_a = read_checkpoint(straight.last_checkpoint)
    _, weights_b = read_checkpoint(resumed.last_checkpoint)
    for name, tensor in weights_a.items():
        assert torch.allclose(tensor, weights_b[name], atol=1e-6), name


def test_frozen_backbone_changes_the_head_only(tmp_path: Path) -> None:
    config = _config(tmp_path, epochs=1, freeze_backbone=True)
    result = train(config, Squares(16, 1), Squares(8, 2), progress=False)
    torch.manual_seed(config.seed)  # the same initial weights as the run
    initial = build_model("ichnet", in_channels=3, input_size=SIZE).state_dict()
    _, trained = read_checkpoint(result.last_checkpoint)
    changed = {k for k, v in trained.items() if not torch.equal(v, initial[k])}
    assert changed == {"fc.weight", "fc.bias"}  # BatchNorm statistics included


def test_sequence_model_trains_on_padded_series(tmp_path: Path) -> None:
    config = _config(tmp_path, architecture="ichnet_seq", context=1, epochs=1, batch_size=3)
    val = SquareSeries(5, 2)
    result = train(config, SquareSeries(9, 1), val, progress=False)
    assert result.metrics.n == sum(len(x) for x, _ in val.items)  # padding left out
    assert math.isfinite(result.history[0]["train_loss"])
    assert result.card.architecture == "ichnet_seq" and result.card.in_channels == 9


def test_pad_series_masks_the_padding() -> None:
    batch = [(torch.ones(2, 9, 4, 4), torch.ones(2, 6)), (torch.ones(4, 9, 4, 4), torch.ones(4, 6))]
    x, y, mask = pad_series(batch)
    assert x.shape == (2, 4, 9, 4, 4) and y.shape == (2, 4, 6)
    assert mask is not None and mask.tolist() == [[True, True, False, False], [True] * 4]
    assert x[0, 2:].abs().sum() == 0


def test_loss_is_the_competition_metric() -> None:
    logits = torch.randn(5, 6)
    y = (torch.rand(5, 6) > 0.5).float()
    loss = WeightedBCEWithLogits()(logits, y)
    expected = weighted_log_loss(y.numpy(), torch.sigmoid(logits).double().numpy())
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    mask = torch.tensor([True, True, False, True, False])
    assert float(WeightedBCEWithLogits()(logits, y, mask)) == pytest.approx(
        weighted_log_loss(y[mask].numpy(), torch.sigmoid(logits[mask]).double().numpy()), rel=1e-5
    )


def test_config_checks_its_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="epochs"):
        _config(tmp_path, epochs=0)
    with pytest.raises(ValueError, match="window"):
        _config(tmp_path, windows=("brain", "lung"))
    with pytest.raises(ValueError, match="name"):
        _config(tmp_path, architecture="lenet")
    assert np.isclose(_config(tmp_path).lr, 3e-3)
    with pytest.raises(ValueError, match="lr_schedule"):
        _config(tmp_path, lr_schedule="step")


class SquaresInSeries(Squares):
    """Squares whose slices belong to series of four, as a SliceDataset's cache says."""

    def __init__(self, n: int, seed: int) -> None:
        super().__init__(n, seed)
        self.cache = SimpleNamespace(series_uids=[f"series-{i // 4}" for i in range(n)])


def test_operating_point_and_calibration_are_chosen_on_validation_series(tmp_path: Path) -> None:
    result = train(_config(tmp_path), Squares(96, 1), SquaresInSeries(48, 2), progress=False)
    card = result.card
    assert set(card.temperature) == set(LABELS) and all(t > 0 for t in card.temperature.values())
    point = card.metrics["operating_point"]
    assert point["level"].startswith("series") and point["target_sensitivity"] == {"any": 0.95}
    series = card.metrics["validation_series"]
    assert series["n"] == 12  # 48 slices in series of four
    assert point["achieved"]["any"]["sensitivity"] >= 0.95
    assert series["per_label"]["any"]["threshold"] == card.thresholds["any"]
    calibration = card.metrics["calibration"]
    assert calibration["nll_after"] <= calibration["nll_before"] + 1e-9
