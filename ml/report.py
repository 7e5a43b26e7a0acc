"""A report folder a person can read: curves, calibration, confusion matrices, worst series.

`write_report(evaluation, folder)` writes, for an `ml.evaluate.Evaluation`:
- roc.png and pr.png: ROC and precision-recall curves per label, image and series level;
- reliability.png: calibration per label (image level), mean predicted probability against the
  observed frequency in ten bins, with the expected calibration error;
- confusion.png: per label the series-level TP/FP/FN/TN at the card's thresholds;
- worst_series.png: slice-probability strips of `any` for the worst false-positive and
  false-negative series (truth shaded, threshold dashed);
- report.json: `ml.evaluate.to_json` plus the reliability bins.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ml.evaluate import Evaluation, to_json
from ml.labels import LABELS
from ml.metrics import roc_curve, series_level


def precision_recall(y_true: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(precision, recall) at every distinct score, calling positive at score >= t."""
    fpr, tpr, _ = roc_curve(y_true, score)
    positives = float((np.asarray(y_true) > 0.5).sum())
    negatives = float(np.asarray(y_true).size - positives)
    tp, fp = tpr[1:] * positives, fpr[1:] * negatives
    precision = np.divide(tp, tp + fp, out=np.ones_like(tp), where=(tp + fp) > 0)
    return precision, tpr[1:]


def reliability(y_true: np.ndarray, prob: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """Ten equal-width bins: count, mean probability, observed frequency; and the ECE."""
    y = np.asarray(y_true, dtype=float).ravel()
    p = np.asarray(prob, dtype=float).ravel()
    index = np.minimum((p * bins).astype(int), bins - 1)
    rows = []
    ece = 0.0
    for b in range(bins):
        chosen = index == b
        n = int(chosen.sum())
        if n == 0:
            continue
        mean_p, freq = float(p[chosen].mean()), float(y[chosen].mean())
        ece += n / max(p.size, 1) * abs(mean_p - freq)
        rows.append({"bin": b, "n": n, "mean_probability": mean_p, "observed": freq})
    return {"bins": rows, "ece": ece}


def _figure(rows: int, cols: int, size: float = 3.2) -> Figure:
    figure = Figure(figsize=(cols * size, rows * size), dpi=90, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _levels(evaluation: Evaluation) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    _, y_series, p_series = series_level(evaluation.series_uids, evaluation.y, evaluation.prob)
    return {"image": (evaluation.y, evaluation.prob), "series": (y_series, p_series)}


def _curves(evaluation: Evaluation, path: Path, kind: str) -> Path:
    figure = _figure(2, len(LABELS))
    for row, (level, (y, p)) in enumerate(_levels(evaluation).items()):
        for j, name in enumerate(LABELS):
            axes: Axes = figure.add_subplot(2, len(LABELS), row * len(LABELS) + j + 1)
            truth = y[:, j] > 0.5
            axes.set_title(f"{name} ({level})", fontsize=8)
            if truth.all() or not truth.any():
                axes.text(0.5, 0.5, "one class only", ha="center", fontsize=8)
                continue
            if kind == "roc":
                fpr, tpr, _ = roc_curve(truth, p[:, j])
                axes.plot(fpr, tpr)
                axes.plot([0, 1], [0, 1], ":", color="grey")
                axes.set(xlabel="1 - specificity", ylabel="sensitivity")
            else:
                precision, recall = precision_recall(truth, p[:, j])
                axes.plot(recall, precision)
                axes.axhline(truth.mean(), linestyle=":", color="grey")
                axes.set(xlabel="recall", ylabel="precision")
            axes.set(xlim=(0, 1), ylim=(0, 1.02))
    figure.savefig(path, format="png")
    return path


def _reliability_plot(evaluation: Evaluation, path: Path) -> tuple[Path, dict[str, Any]]:
    figure = _figure(1, len(LABELS))
    tables = {}
    for j, name in enumerate(LABELS):
        table = reliability(evaluation.y[:, j], evaluation.prob[:, j])
        tables[name] = table
        axes = figure.add_subplot(1, len(LABELS), j + 1)
        xs = [r["mean_probability"] for r in table["bins"]]
        axes.plot([0, 1], [0, 1], ":", color="grey")
        axes.plot(xs, [r["observed"] for r in table["bins"]], "o-")
        axes.set(title=f"{name}: ECE {table['ece']:.3f}", xlabel="mean probability",
                 ylabel="observed frequency", xlim=(0, 1), ylim=(0, 1))  # fmt: skip
        axes.title.set_fontsize(8)
    figure.savefig(path, format="png")
    return path, tables


def _confusion_plot(evaluation: Evaluation, path: Path) -> Path:
    figure = _figure(1, len(LABELS), size=2.4)
    for j, name in enumerate(LABELS):
        m = evaluation.series.per_label[name]
        cells = np.array([[m.tp, m.fn], [m.fp, m.tn]])
        axes = figure.add_subplot(1, len(LABELS), j + 1)
        axes.imshow(cells, cmap="Blues")
        for (r, c), value in np.ndenumerate(cells):
            axes.text(c, r, str(value), ha="center", va="center")
        axes.set_xticks([0, 1], ["called", "not called"], fontsize=7)
        axes.set_yticks([0, 1], ["bleed", "none"], fontsize=7)
        axes.set_title(f"{name} >= {m.threshold:.3g}", fontsize=8)
    figure.savefig(path, format="png")
    return path


def worst_series(evaluation: Evaluation, count: int = 3) -> dict[str, list[str]]:
    """Series UIDs of the highest-scoring negatives and lowest-scoring positives for `any`."""
    ids, y_series, p_series = series_level(evaluation.series_uids, evaluation.y, evaluation.prob)
    truth, score = y_series[:, 0] > 0.5, p_series[:, 0]
    order = np.argsort(score, kind="stable")
    negatives = [ids[i] for i in order[::-1] if not truth[i]][:count]
    positives = [ids[i] for i in order if truth[i]][:count]
    return {"false_positive": negatives, "false_negative": positives}


def _strips(evaluation: Evaluation, path: Path) -> Path:
    worst = worst_series(evaluation)
    chosen = [(kind, uid) for kind, uids in worst.items() for uid in uids]
    figure = _figure(max(1, len(chosen)), 1, size=2.0)
    figure.set_size_inches(8, 1.8 * max(1, len(chosen)))
    series = np.asarray(evaluation.series_uids)
    threshold = evaluation.card.thresholds["any"]
    for k, (kind, uid) in enumerate(chosen):
        rows = np.flatnonzero(series == uid)
        axes = figure.add_subplot(len(chosen), 1, k + 1)
        axes.bar(range(len(rows)), evaluation.prob[rows, 0], color="tab:red")
        for s, flag in enumerate(evaluation.y[rows, 0] > 0.5):
            if flag:
                axes.axvspan(s - 0.5, s + 0.5, color="gold", alpha=0.3)
        axes.axhline(threshold, linestyle="--", color="black")
        axes.set(ylim=(0, 1), ylabel="p(any)")
        axes.set_title(f"worst {kind.replace('_', ' ')}: {uid[-24:]}", fontsize=8)
    figure.savefig(path, format="png")
    return path


def write_report(evaluation: Evaluation, folder: Path) -> dict[str, Path]:
    """Write the report files into `folder` (made if missing); return them by name."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "roc": _curves(evaluation, folder / "roc.png", "roc"),
        "pr": _curves(evaluation, folder / "pr.png", "pr"),
        "confusion": _confusion_plot(evaluation, folder / "confusion.png"),
        "worst_series": _strips(evaluation, folder / "worst_series.png"),
    }
    files["reliability"], tables = _reliability_plot(evaluation, folder / "reliability.png")
    report = to_json(evaluation)
    report["reliability"] = tables
    report["worst_series"] = worst_series(evaluation)
    files["json"] = folder / "report.json"
    files["json"].write_text(json.dumps(_finite(report), indent=1, allow_nan=False) + "\n")
    return files


def _finite(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
