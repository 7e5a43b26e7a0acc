"""Batch augmentation: seeded, label-preserving, windows kept apart, series changed alike."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from ml.augment import AugmentConfig, BatchAugment
from ml.labels import LABELS
from ml.train import TrainConfig, train
from ml.windowing import windows_by_name

WINDOWS = ("brain", "subdural", "bone")
OFF = AugmentConfig(hu_shift=0, hu_scale=0, window_jitter=0, flip=False, rotate_deg=0, zoom=0,
                    translate=0, elastic=0, noise_hu=0, blur=0, resize=0)  # fmt: skip


def _batch(seed: int, shape: tuple[int, ...] = (6, 9, 32, 32)) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def test_same_seed_same_batch_other_seed_other_batch() -> None:
    augment, x = BatchAugment(WINDOWS), _batch(0)
    torch.manual_seed(7)
    a = augment(x)
    torch.manual_seed(7)
    b = augment(x)
    torch.manual_seed(8)
    c = augment(x)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and float(a.min()) >= 0 and float(a.max()) <= 1
    assert not torch.equal(a, x)


def test_everything_off_leaves_the_batch_alone() -> None:
    x = _batch(1)
    torch.testing.assert_close(BatchAugment(WINDOWS, OFF)(x), x, atol=1e-5, rtol=0)


def test_an_hu_shift_moves_each_window_by_its_width() -> None:
    x = torch.full((4, 9, 8, 8), 0.5)
    torch.manual_seed(0)
    out = BatchAugment(WINDOWS, dataclasses.replace(OFF, hu_shift=20.0))(x)
    widths = [w.width for w in windows_by_name(WINDOWS)]
    moved = (out - x)[:, :, 0, 0]  # (N, C): per item one shift, seen through each window
    hu = moved[:, 0] * widths[0]
    assert float(hu.abs().max()) > 1  # it did shift
    for c in range(9):
        torch.testing.assert_close(moved[:, c] * widths[c % 3], hu, atol=1e-3, rtol=1e-3)


def test_flips_happen_to_about_half_and_nothing_else_changes() -> None:
    x = _batch(2, (64, 3, 8, 8))
    torch.manual_seed(1)
    out = BatchAugment(WINDOWS[:1], dataclasses.replace(OFF, flip=True))(x)
    flipped = [torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x, strict=True)]
    kept = [torch.equal(o, xi) for o, xi in zip(out, x, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 16 < sum(flipped) < 48


def test_a_series_is_changed_as_a_whole() -> None:
    frame = _batch(3, (1, 9, 32, 32))
    series = frame.repeat(5, 1, 1, 1)[None].repeat(2, 1, 1, 1, 1)  # (2 series, 5 frames)
    torch.manual_seed(4)
    config = dataclasses.replace(AugmentConfig(), noise_hu=0.0)  # noise differs per slice
    out = BatchAugment(WINDOWS, config)(series)
    assert out.shape == series.shape
    for item in out:
        for k in range(1, 5):
            assert torch.equal(item[k], item[0])
    assert not torch.equal(out[0], out[1])  # but each series its own way


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="blur"):
        AugmentConfig(blur=2)
    with pytest.raises(ValueError, match="rotate_deg"):
        AugmentConfig(rotate_deg=-1)
    with pytest.raises(ValueError, match="multiple"):
        BatchAugment(WINDOWS)(torch.rand(2, 4, 8, 8))


class _Tiny(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(n)
        self.x = torch.rand(n, 3, 32, 32, generator=g)
        self.y = torch.zeros(n, len(LABELS))
        self.y[::2, 0] = 1

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


def test_training_changes_every_training_batch_and_no_validation_batch(tmp_path: Path) -> None:
    seen: list[int] = []

    def counting(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.shape[0])
        return BatchAugment(WINDOWS)(x)

    config = TrainConfig(checkpoint_dir=tmp_path, architecture="ichnet", context=0, input_size=32,
                         epochs=2, batch_size=8, seed=0, device="cpu", training_data="unit test")  # fmt: skip
    train(config, _Tiny(20), _Tiny(12), progress=False, augment=counting)
    assert seen == [8, 8, 4] * 2  # 20 training items per epoch, in batches; validation untouched
