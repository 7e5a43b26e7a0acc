"""Whole series as training items, for sequence models (`ichnet_seq`).

Item i of a `SeriesDataset` is one series of a `SliceCache`: x (T, C * (2k + 1), S, S) and
y (T, L) float32 tensors, slices in position order along the slice normal, each slice's
channels stacked with its k neighbours exactly as `ml.inference.stack_context` does at
inference. Batch with `ml.train.pad_series`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import numpy as np
import torch
from torch.utils.data import Dataset

from ml.cache import SliceCache, SliceDataset
from ml.inference import stack_context
from ml.models import architecture

Item = tuple[torch.Tensor, torch.Tensor]


class SeriesDataset(Dataset[Item]):
    """Map-style dataset of the series in `cache` (first-seen order), one item per series.

    `max_slices` caps T for memory: a longer series yields its `max_slices` central slices
    (context still comes from the real neighbours at the cut).
    """

    def __init__(
        self, cache: SliceCache, context: int = 0, *, max_slices: int | None = None
    ) -> None:
        if context < 0:
            raise ValueError(f"context: must be >= 0, got {context}")
        if max_slices is not None and max_slices < 1:
            raise ValueError(f"max_slices: must be >= 1, got {max_slices}")
        self.cache = cache
        self.context = context
        self.max_slices = max_slices
        members = cache.series_members()
        self.series_uids: list[str] = list(members)
        self._members: list[np.ndarray] = list(members.values())

    def __len__(self) -> int:
        return len(self._members)

    def slice_indices(self, i: int) -> np.ndarray:
        """Cache rows of the slices item i yields, in their order."""
        rows = self._members[i]
        if self.max_slices is not None and len(rows) > self.max_slices:
            start = (len(rows) - self.max_slices) // 2
            return rows[start : start + self.max_slices]
        return rows

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self._members[i]
        kept = self.slice_indices(i)
        first = int(np.flatnonzero(rows == kept[0])[0])
        volume = torch.from_numpy(self.cache.pixels(rows))  # (N, C, S, S), whole series
        x = stack_context(volume, range(first, first + len(kept)), self.context)
        y = torch.from_numpy(self.cache.labels[kept].astype(np.float32))
        return x, y


def dataset_for(cache: SliceCache, architecture_name: str, context: int) -> Dataset[Item]:
    """The dataset an architecture trains on: slices for slice models, series for sequence ones."""
    if architecture(architecture_name).kind == "sequence":
        return SeriesDataset(cache, context)
    return cast(Dataset[Item], SliceDataset(cache, context))  # map-style by duck typing


class Augmented(Dataset[Item]):
    """Another dataset's items with random left-right flips and shifts of x; y unchanged.

    A series is flipped and shifted as a whole. Draws from torch's global generator, which
    `ml.train.train` seeds (and DataLoader workers seed per worker), so runs repeat.
    Left-right mirroring keeps every RSNA label; shifts (`shift` pixels at most, wrapping
    around the edge, which is air) stand in for heads that sit off centre.
    """

    def __init__(self, data: Dataset[Item], *, flip: bool = True, shift: int = 0) -> None:
        if shift < 0:
            raise ValueError(f"shift: must be >= 0, got {shift}")
        self.data = data
        self.flip = flip
        self.shift = shift

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.data[i]
        if self.flip and bool(torch.rand(()) < 0.5):
            x = x.flip(-1)
        if self.shift:
            dy, dx = (int(v) for v in torch.randint(-self.shift, self.shift + 1, (2,)))
            x = torch.roll(x, (dy, dx), dims=(-2, -1))
        return x, y


def augmentation(input_size: int) -> Callable[[Dataset[Item]], Augmented]:
    """The training augmentation of `ichtriage admin`: flips, shifts up to 5% of the side."""
    shift = max(1, input_size // 20)
    return lambda data: Augmented(data, shift=shift)
