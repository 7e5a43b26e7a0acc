"""Series-level inference: HU slices in, per-slice and per-series probabilities out.

This is what the node's worker calls: `Classifier.load(path)` once, then `predict_series` per
series. Preprocessing follows the checkpoint's card (windows, the fit to 512 pixels or to the
card's field of view in mm, resize, 2.5D context).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ml.checkpoint import ModelCard, load_checkpoint
from ml.errors import ModelError, SliceError
from ml.models import SeriesModel, architecture
from ml.windowing import Window, fit_shape, preprocess, windows_by_name

logger = logging.getLogger(__name__)

def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" -> CUDA when available, else CPU; anything else as torch spells it."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def stack_context(volume: torch.Tensor, indices: Sequence[int], context: int) -> torch.Tensor:
    """2.5D input for the slices at `indices` of a (N, C, H, W) volume.

    Returns (len(indices), C * (2 * context + 1), H, W): the channels of slices i - context ..
    i + context, offset-major (all windows of the lowest neighbour first); neighbours past
    either end repeat the edge slice.
    """
    if context < 0:
        raise ValueError(f"context: must be >= 0, got {context}")
    index = torch.as_tensor(list(indices), dtype=torch.long, device=volume.device)
    if context == 0:
        return volume[index]
    last = volume.shape[0] - 1
    parts = [volume[(index + offset).clamp(0, last)] for offset in range(-context, context + 1)]
    return torch.cat(parts, dim=1)


@dataclass(frozen=True)
class SeriesPrediction:
    per_slice: np.ndarray  # (N, L) probabilities, slices in the order given
    series: np.ndarray  # (L,) max over slices per label
    calls: dict[str, bool]  # per label: at or above the card's threshold, see `hierarchical_calls`
    key_slices: dict[str, int]  # per label: index of the slice with the highest probability
    # Seconds the model took: windowed tensors in, probabilities out (decoding the slices and
    # windowing them not counted).
    model_seconds: float = 0.0
    # Subtypes at or above their thresholds that are not called because `any` is below its own
    # (see `hierarchical_calls`); the node says so in the result's notes.
    held_back: tuple[str, ...] = ()


def hierarchical_calls(series: dict[str, float],
                       thresholds: dict[str, float]) -> tuple[dict[str, bool], tuple[str, ...]]:
    """The calls of one series, and the subtypes held back.

    In the RSNA labels `any` is present exactly when some subtype is, so a report must never
    say "no hemorrhage" and "subdural hemorrhage" at once. `any`'s threshold is the triage
    operating point (chosen for sensitivity); each subtype's was chosen for specificity among
    series, on its own. A subtype is therefore called only when `any` is: one at or above its
    threshold while `any` is below its own is held back (returned, so it can be said), and
    `any` alone decides whether the series is positive. Labels without `any` are called each
    on its own threshold. Probabilities in [0, 1]; thresholds per label, as in the card.
    """
    raw = {name: bool(p >= thresholds[name]) for name, p in series.items()}
    if "any" not in raw or raw["any"]:
        return raw, ()
    held = tuple(name for name, called in raw.items() if called and name != "any")
    return {name: False for name in raw}, held


class Classifier:
    """A loaded checkpoint, ready to score series. Build with `Classifier.load`."""

    def __init__(self, model: nn.Module, card: ModelCard, device: torch.device) -> None:
        self.model = model.to(device).eval()
        self.card = card
        self.device = device
        self._windows = _windows(card)
        self._sequence = architecture(card.architecture).kind == "sequence"
        if self._sequence and not isinstance(model, SeriesModel):
            raise ModelError(f"{card.architecture}: sequence model expected, got {type(model)}")

    @classmethod
    def load(cls, path: Path, *, device: str = "auto") -> Classifier:
        """Load once; device "auto" = CUDA when available."""
        target = resolve_device(device)
        model, card = load_checkpoint(path, device=target)
        logger.info("classifier %s (%s) on %s", card.architecture, card.sha256[:12], target)
        return cls(model, card, target)

    def fit_shape(self, pixel_spacing: Sequence[float] | None) -> tuple[int, int]:
        """(rows, cols) of a slice's pixels that this model sees (`ml.windowing.fit_shape`
        with the card's field of view); PixelSpacing in mm, row then column."""
        return fit_shape(pixel_spacing, self.card.field_of_view_mm)

    def preprocess(self, slices: Iterable[np.ndarray], *,
                   pixel_spacing: Sequence[float] | None = None) -> torch.Tensor:
        """(N, C, S, S) model-size stack of windowed slices, converted one slice at a time.

        `pixel_spacing` (mm, row then column; the series' PixelSpacing) places the card's field
        of view on the slices; a card without one, or a slice without a plausible spacing, is
        fitted to 512 pixels.
        """
        fit = self.fit_shape(pixel_spacing)
        size = self.card.input_size
        out_size = None if (size, size) == fit else size
        converted = []
        for i, hu in enumerate(slices):
            array = np.asarray(hu)
            if array.ndim != 2 or array.size == 0:
                raise SliceError(f"slice {i}: expected a 2-D HU array, got shape {array.shape}")
            if not np.issubdtype(array.dtype, np.number):
                raise SliceError(f"slice {i}: expected numbers, got dtype {array.dtype}")
            if not np.isfinite(array).all():
                raise SliceError(f"slice {i}: NaN or infinite HU values")
            image = preprocess(array[None], self._windows, size=fit, out_size=out_size)
            converted.append(torch.from_numpy(image[0]))
        if not converted:
            raise SliceError("no slices in the series")
        return torch.stack(converted)

    @torch.inference_mode()
    def predict_series(
        self, slices: Iterable[np.ndarray], *, batch_size: int = 16,
        pixel_spacing: Sequence[float] | None = None,
    ) -> SeriesPrediction:  # fmt: skip
        """Score one series: `slices` are (H, W) HU arrays ordered inferior -> superior, with
        PixelSpacing `pixel_spacing` (mm, row then column; see `preprocess`)."""
        if batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
        volume = self.preprocess(slices, pixel_spacing=pixel_spacing)
        started = time.perf_counter()
        logits = self._logits(volume, batch_size).float()
        temperature = torch.tensor(self.card.temperatures(), device=logits.device)
        per_slice = torch.sigmoid(logits / temperature).cpu().numpy()  # calibrated (card)
        model_seconds = time.perf_counter() - started  # .cpu() waited for the device
        series = per_slice.max(axis=0)
        labels = self.card.labels
        calls, held_back = hierarchical_calls(
            {name: float(series[j]) for j, name in enumerate(labels)}, self.card.thresholds)
        return SeriesPrediction(
            per_slice=per_slice,
            series=series,
            calls=calls,
            key_slices={name: int(per_slice[:, j].argmax()) for j, name in enumerate(labels)},
            model_seconds=model_seconds,
            held_back=held_back,
        )

    def _logits(self, volume: torch.Tensor, batch_size: int) -> torch.Tensor:
        """(N, L) logits; the stack stays on the CPU and moves to the device batch by batch."""
        n = volume.shape[0]
        outputs = []
        for start in range(0, n, batch_size):
            x = stack_context(volume, range(start, min(n, start + batch_size)), self.card.context)
            x = x.to(self.device, non_blocking=True)
            if self._sequence:
                assert isinstance(self.model, SeriesModel)
                outputs.append(self.model.slice_features(x))
            else:
                outputs.append(self.model(x))
        stacked = torch.cat(outputs)
        if self._sequence:
            assert isinstance(self.model, SeriesModel)
            return self.model.sequence_logits(stacked[None])[0]
        return stacked


def _windows(card: ModelCard) -> tuple[Window, ...]:
    try:
        return windows_by_name(card.windows)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"model card: {exc}") from exc
