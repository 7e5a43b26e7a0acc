"""Evaluation metrics in numpy: what the study reported, the RSNA 2019 score, and triage rates.

Arrays are (N, L) with columns in `ml.labels.LABELS` order: y_true in {0, 1}, prob in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ml.labels import LABEL_WEIGHTS, LABELS

EPS = 1e-7  # probability clip of the RSNA 2019 scorer

# Triage operating point: a missed bleed costs more than a false alarm, so "any" (the flag
# that reorders the worklist) is set for >= 95% sensitivity on validation; subtypes, which
# only describe the flag, take the Youden point (max sensitivity + specificity - 1), raised
# where a specificity floor asks (`min_specificity`): a subtype named in a report should be right.
DEFAULT_MIN_SENSITIVITY: Mapping[str, float] = {"any": 0.95}

Thresholds = Mapping[str, float] | Sequence[float] | float


def _as_2d(y_true: np.ndarray, prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(prob, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 2:
        raise ValueError(f"y_true, prob: need equal (N, L) shapes, got {y.shape} and {p.shape}")
    return y, p


def _threshold_vector(thresholds: Thresholds, labels: Sequence[str]) -> np.ndarray:
    if isinstance(thresholds, Mapping):
        missing = [name for name in labels if name not in thresholds]
        if missing:
            raise ValueError(f"thresholds: missing labels {missing}")
        return np.array([float(thresholds[name]) for name in labels])
    if isinstance(thresholds, int | float):
        return np.full(len(labels), float(thresholds))
    vector = np.asarray(thresholds, dtype=np.float64)
    if vector.shape != (len(labels),):
        raise ValueError(f"thresholds: need {len(labels)} values, got shape {vector.shape}")
    return vector


def auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve via the Mann-Whitney rank sum; ties count one half.

    NaN when y_true holds only one class.
    """
    y = np.asarray(y_true).ravel() > 0.5
    s = np.asarray(score, dtype=np.float64).ravel()
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(s.size, dtype=np.float64)
    # average 1-based rank over each run of tied scores
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], s.size]
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(y_true: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds): one point per distinct score, calling positive at score >= t.

    thresholds decrease and start at +inf (nothing called), like scikit-learn's.
    """
    y = np.asarray(y_true).ravel() > 0.5
    s = np.asarray(score, dtype=np.float64).ravel()
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_run = np.r_[np.flatnonzero(s[1:] != s[:-1]), s.size - 1]
    tp = np.cumsum(y)[last_of_run]
    fp = (last_of_run + 1) - tp
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    tpr = np.r_[0.0, tp / n_pos] if n_pos else np.full(tp.size + 1, math.nan)
    fpr = np.r_[0.0, fp / n_neg] if n_neg else np.full(fp.size + 1, math.nan)
    return fpr, tpr, np.r_[math.inf, s[last_of_run]]


def binary_cross_entropy(y_true: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """Element-wise BCE with probabilities clipped to [EPS, 1 - EPS]."""
    p = np.clip(np.asarray(prob, dtype=np.float64), EPS, 1 - EPS)
    y = np.asarray(y_true, dtype=np.float64)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def weighted_log_loss(y_true: np.ndarray, prob: np.ndarray) -> float:
    """The RSNA 2019 score: per row, BCE weighted any 2 / subtypes 1 and averaged over the
    weights; then the mean over rows. Probabilities are clipped to [1e-7, 1 - 1e-7].
    """
    y, p = _as_2d(y_true, prob)
    weights = np.asarray(LABEL_WEIGHTS, dtype=np.float64)
    if y.shape[1] != weights.size:
        raise ValueError(f"y_true: need {weights.size} label columns, got {y.shape[1]}")
    rows = (binary_cross_entropy(y, p) * weights).sum(axis=1) / weights.sum()
    return float(rows.mean()) if rows.size else math.nan


@dataclass(frozen=True)
class Confusion:
    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def sensitivity(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else math.nan

    @property
    def specificity(self) -> float:
        return self.tn / (self.tn + self.fp) if self.tn + self.fp else math.nan

    @property
    def accuracy(self) -> float:
        total = self.tp + self.fp + self.tn + self.fn
        return (self.tp + self.tn) / total if total else math.nan


def confusion(
    y_true: np.ndarray, prob: np.ndarray, thresholds: Thresholds, labels: Sequence[str] = LABELS
) -> dict[str, Confusion]:
    """Per label TP/FP/TN/FN, calling positive where prob >= the label's threshold."""
    y, p = _as_2d(y_true, prob)
    called = p >= _threshold_vector(thresholds, labels)
    truth = y > 0.5
    return {
        name: Confusion(
            tp=int((called[:, j] & truth[:, j]).sum()),
            fp=int((called[:, j] & ~truth[:, j]).sum()),
            tn=int((~called[:, j] & ~truth[:, j]).sum()),
            fn=int((~called[:, j] & truth[:, j]).sum()),
        )
        for j, name in enumerate(labels)
    }


def accuracy(y_true: np.ndarray, prob: np.ndarray, threshold: float = 0.5) -> float:
    """The study's accuracy: correct decisions over all N x L label decisions."""
    y, p = _as_2d(y_true, prob)
    return float(((p >= threshold) == (y > 0.5)).mean()) if y.size else math.nan


def _sensitivity_threshold(truth: np.ndarray, score: np.ndarray, target: float) -> float:
    """The highest threshold keeping sensitivity >= target (best specificity under it)."""
    positives = np.sort(score[truth])[::-1]
    needed = max(1, math.ceil(target * positives.size - 1e-9))
    return float(positives[needed - 1])


def _youden_threshold(truth: np.ndarray, score: np.ndarray) -> float:
    fpr, tpr, thresholds = roc_curve(truth, score)
    best = int(np.argmax(tpr[1:] - fpr[1:])) + 1  # skip the +inf point
    return float(thresholds[best])


def _specificity_threshold(truth: np.ndarray, score: np.ndarray, target: float) -> float:
    """The lowest observed score that, as a threshold, keeps specificity >= target."""
    negatives = np.sort(score[~truth])[::-1]
    allowed = math.floor((1 - target) * negatives.size + 1e-9)  # false positives within target
    if allowed >= negatives.size:
        return float(score.min())
    above = score[score > negatives[allowed]]  # calls at most `allowed` negatives
    return float(above.min()) if above.size else float(np.nextafter(negatives[0], np.inf))


def choose_thresholds(
    y_true: np.ndarray,
    prob: np.ndarray,
    *,
    min_sensitivity: Mapping[str, float] = DEFAULT_MIN_SENSITIVITY,
    min_specificity: Mapping[str, float] | None = None,
    labels: Sequence[str] = LABELS,
    fallback: float = 0.5,
) -> dict[str, float]:
    """Per-label thresholds for triage (see DEFAULT_MIN_SENSITIVITY).

    Labels named in `min_sensitivity` get the highest threshold reaching that sensitivity;
    the others the Youden point, raised where needed to the lowest threshold whose
    specificity reaches `min_specificity[label]`. A label without both classes keeps
    `fallback`. ValueError for a label not in `labels` or a target outside (0, 1].
    """
    y, p = _as_2d(y_true, prob)
    floors = dict(min_specificity or {})
    for what, targets in (("min_sensitivity", min_sensitivity), ("min_specificity", floors)):
        unknown = set(targets) - set(labels)
        if unknown:
            raise ValueError(f"{what}: unknown labels {sorted(unknown)}")
        outside = {k: v for k, v in targets.items() if not 0 < v <= 1}
        if outside:
            raise ValueError(f"{what}: targets must lie in (0, 1], got {outside}")
    chosen = {}
    for j, name in enumerate(labels):
        truth = y[:, j] > 0.5
        if truth.all() or not truth.any():
            chosen[name] = fallback
        elif name in min_sensitivity:
            chosen[name] = _sensitivity_threshold(truth, p[:, j], min_sensitivity[name])
        else:
            chosen[name] = _youden_threshold(truth, p[:, j])
            if name in floors:
                chosen[name] = max(chosen[name],
                                   _specificity_threshold(truth, p[:, j], floors[name]))
    return chosen


@dataclass(frozen=True)
class LabelMetrics:
    threshold: float
    auc: float
    sensitivity: float
    specificity: float
    accuracy: float
    tp: int
    fp: int
    tn: int
    fn: int


@dataclass(frozen=True)
class Metrics:
    """The study's figures (loss, accuracy, TP/FP/TN/FN at 0.5, micro AUC) and more."""

    n: int  # rows (images, or series for series-level metrics)
    loss: float  # mean BCE over all N x L outputs (Keras' binary_crossentropy)
    accuracy: float  # over all N x L decisions at 0.5 (the study's)
    tp: int  # totals over labels at 0.5, as the study's Keras metrics counted
    fp: int
    tn: int
    fn: int
    auc: float  # micro: all labels' (truth, score) pairs pooled, as Keras' AUC
    weighted_log_loss: float  # the RSNA 2019 score
    per_label: dict[str, LabelMetrics]  # at the chosen thresholds

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: NaN becomes None."""
        return _json_safe(asdict(self))


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def evaluate(
    y_true: np.ndarray, prob: np.ndarray, thresholds: Thresholds = 0.5,
    labels: Sequence[str] = LABELS,
) -> Metrics:  # fmt: skip
    y, p = _as_2d(y_true, prob)
    at_half = confusion(y, p, 0.5, labels).values()
    at_chosen = confusion(y, p, thresholds, labels)
    vector = _threshold_vector(thresholds, labels)
    per_label = {
        name: LabelMetrics(
            threshold=float(vector[j]), auc=auc(y[:, j], p[:, j]),
            sensitivity=c.sensitivity, specificity=c.specificity, accuracy=c.accuracy,
            tp=c.tp, fp=c.fp, tn=c.tn, fn=c.fn,
        )  # fmt: skip
        for j, (name, c) in enumerate(at_chosen.items())
    }
    return Metrics(
        n=y.shape[0],
        loss=float(binary_cross_entropy(y, p).mean()) if y.size else math.nan,
        accuracy=accuracy(y, p),
        tp=sum(c.tp for c in at_half),
        fp=sum(c.fp for c in at_half),
        tn=sum(c.tn for c in at_half),
        fn=sum(c.fn for c in at_half),
        auc=auc(y, p),
        weighted_log_loss=weighted_log_loss(y, p) if y.shape[1] == len(LABEL_WEIGHTS) else math.nan,
        per_label=per_label,
    )


def series_level(
    series_ids: Sequence[str], y_true: np.ndarray, prob: np.ndarray
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Image rows to one row per series (first-seen order): the max per label of each."""
    y, p = _as_2d(y_true, prob)
    if len(series_ids) != y.shape[0]:
        raise ValueError(f"series_ids: need {y.shape[0]} ids, got {len(series_ids)}")
    ids = list(dict.fromkeys(series_ids))
    index = {sid: i for i, sid in enumerate(ids)}
    rows = np.array([index[sid] for sid in series_ids], dtype=np.int64)
    y_series = np.full((len(ids), y.shape[1]), -np.inf)
    p_series = np.full((len(ids), y.shape[1]), -np.inf)
    np.maximum.at(y_series, rows, y)
    np.maximum.at(p_series, rows, p)
    return ids, y_series, p_series


def plot_roc(
    y_true: np.ndarray, prob: np.ndarray, path: Path, labels: Sequence[str] = LABELS
) -> Path:
    """Save a PNG with one ROC curve per label (AUC in the legend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    y, p = _as_2d(y_true, prob)
    figure = Figure(figsize=(6, 6), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for j, name in enumerate(labels):
        if math.isnan(auc(y[:, j], p[:, j])):
            continue  # one class only: no curve
        fpr, tpr, _ = roc_curve(y[:, j], p[:, j])
        axes.plot(fpr, tpr, label=f"{name} (AUC {auc(y[:, j], p[:, j]):.3f})")
    axes.plot([0, 1], [0, 1], linestyle=":", color="grey")
    axes.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01))
    if axes.get_legend_handles_labels()[0]:  # no curve when every label has one class only
        axes.legend(loc="lower right")
    figure.savefig(path, format="png")
    return path
