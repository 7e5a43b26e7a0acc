"""Calibration and operating points: what a probability means, and where the node calls.

Temperature scaling (Guo et al. 2017), one temperature per label: p = sigmoid(logit / T), T
fitted on validation data by minimising the binary cross-entropy. It changes no ranking (AUCs
stay), only how far the probabilities are from 0 and 1.

Operating points are chosen at the level the node calls: a series is called positive for a
label when its highest slice probability reaches the threshold. `any` gets the highest
threshold that keeps the series sensitivity at the target; subtypes the Youden point, raised
to the lowest threshold that keeps the series specificity at their floor (a subtype the report
names should be right; `any` carries the sensitivity). Each is then moved to the middle, in
logits, of the gap below it that holds no negative series.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ml.labels import LABELS
from ml.metrics import Metrics, choose_thresholds, evaluate, series_level

LOGIT_CLIP = 30.0
_CLIP = 1e-4  # probabilities beyond this are treated as certain when centring


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-np.clip(logits, -LOGIT_CLIP, LOGIT_CLIP)))


def _nll(y: np.ndarray, logits: np.ndarray) -> float:
    """Mean binary cross-entropy of sigmoid(logits), computed stably."""
    z = np.clip(logits, -LOGIT_CLIP, LOGIT_CLIP)
    return float(np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))))


def fit_temperature(y: np.ndarray, logits: np.ndarray, *, bounds: tuple[float, float] = (0.05, 20.0)
                    ) -> float:  # fmt: skip
    """The temperature T minimising BCE(y, sigmoid(logits / T)) for one label.

    The loss is unimodal in log T on the scale that matters; a log-spaced grid brackets the
    minimum and golden-section search refines it. 1.0 when y holds one class only.
    """
    y = np.asarray(y, dtype=np.float64).ravel() > 0.5
    z = np.asarray(logits, dtype=np.float64).ravel()
    if y.all() or not y.any():
        return 1.0
    grid = np.geomspace(*bounds, 61)
    losses = [_nll(y, z / t) for t in grid]
    best = int(np.argmin(losses))
    lo, hi = math.log(grid[max(best - 1, 0)]), math.log(grid[min(best + 1, len(grid) - 1)])
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(40):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if _nll(y, z / math.exp(a)) < _nll(y, z / math.exp(b)):
            hi = b
        else:
            lo = a
    return round(math.exp((lo + hi) / 2), 6)


def fit_temperatures(y: np.ndarray, logits: np.ndarray, labels: Sequence[str] = LABELS
                     ) -> dict[str, float]:  # fmt: skip
    """One temperature per label column of (N, L) arrays."""
    return {name: fit_temperature(y[:, j], logits[:, j]) for j, name in enumerate(labels)}


def apply_temperatures(logits: np.ndarray, temperatures: Mapping[str, float],
                       labels: Sequence[str] = LABELS) -> np.ndarray:  # fmt: skip
    """Calibrated probabilities, (N, L)."""
    scale = np.array([float(temperatures.get(name, 1.0)) for name in labels])
    return sigmoid(np.asarray(logits, dtype=np.float64) / scale)


def centred(truth: np.ndarray, score: np.ndarray, threshold: float) -> float:
    """Move `threshold` to the middle, in logits, of the gap below it that holds no negative.

    `choose_thresholds` returns the highest threshold meeting its criterion, on the edge of
    that gap: with a confident model that edge is a probability of 1.0, and an unseen bleed
    scoring 0.9999 would be missed. The middle keeps the validation specificity and calls at
    least the same positives.
    """
    if truth.all() or not truth.any():
        return threshold  # the fallback of choose_thresholds: nothing to centre on
    below = score[~truth & (score < threshold)]
    if below.size == 0:
        return threshold
    low, high = np.clip([float(below.max()), threshold], _CLIP, 1 - _CLIP)
    middle = (np.log(low / (1 - low)) + np.log(high / (1 - high))) / 2
    return round(float(1 / (1 + np.exp(-middle))), 6)


@dataclass(frozen=True)
class OperatingPoint:
    """Thresholds chosen at series level, and what they achieve on the data they came from."""

    thresholds: dict[str, float]
    target: dict[str, float]  # minimum series sensitivity per label (others: Youden)
    floor: dict[str, float]  # minimum series specificity per label (raises its Youden point)
    image: Metrics  # at the thresholds, every slice
    series: Metrics  # at the thresholds, max per series

    def summary(self) -> dict[str, Any]:
        """Per label the achieved series sensitivity and specificity, for the card."""
        return {
            "level": "series (maximum over slices, as the node calls)",
            "target_sensitivity": dict(self.target),
            "minimum_specificity": dict(self.floor),
            "achieved": {name: {"sensitivity": _safe(m.sensitivity), "specificity": _safe(m.specificity),
                                "tp": m.tp, "fp": m.fp, "tn": m.tn, "fn": m.fn}
                         for name, m in self.series.per_label.items()},
        }  # fmt: skip


def _safe(value: float) -> float | None:
    return None if value != value else value


def series_operating_point(
    series_ids: Sequence[str], y: np.ndarray, prob: np.ndarray, *,
    target: Mapping[str, float], floor: Mapping[str, float] | None = None,
    labels: Sequence[str] = LABELS,
) -> OperatingPoint:  # fmt: skip
    """Thresholds for series calls from per-slice truths and (calibrated) probabilities.

    `target`: minimum series sensitivity by label; `floor`: minimum series specificity by
    label for the others (see `ml.metrics.choose_thresholds`)."""
    _, y_series, p_series = series_level(series_ids, y, prob)
    chosen = choose_thresholds(y_series, p_series, min_sensitivity=target,
                               min_specificity=floor, labels=labels)
    thresholds = {name: centred(y_series[:, j] > 0.5, p_series[:, j], chosen[name])
                  for j, name in enumerate(labels)}  # fmt: skip
    return OperatingPoint(thresholds, dict(target), dict(floor or {}),
                          evaluate(y, prob, thresholds, labels),
                          evaluate(y_series, p_series, thresholds, labels))  # fmt: skip
