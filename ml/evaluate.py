"""Score a checkpoint on labelled DICOM the way the node does, at image and series level.

Each series goes through `ml.inference.Classifier.predict_series` (the worker's preprocessing:
HU, windows, 512 fit, resize, 2.5D context, sequence model), slices in position order. Image
level takes every slice's probabilities; series level the maximum per label over a series,
against "does any slice of the series carry the label". Calls use the card's thresholds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ml.checkpoint import ModelCard
from ml.errors import SliceError
from ml.inference import Classifier
from ml.labels import LABELS
from ml.metrics import Metrics, evaluate, series_level
from ml.planes import pixel_spacing_of
from ml.rsna import ImageRecord, group_series
from ml.windowing import load_slice

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Evaluation:
    card: ModelCard
    image_ids: tuple[str, ...]  # one per scored slice
    series_uids: tuple[str, ...]  # the series of each scored slice
    y: np.ndarray  # (images, L) labels
    prob: np.ndarray  # (images, L) probabilities
    image: Metrics
    series: Metrics
    skipped: tuple[str, ...]  # image ids that could not be read
    seconds_per_series: float  # mean time in predict_series (decoding excluded)


def evaluate_classifier(
    classifier: Classifier, records: Sequence[ImageRecord], *, batch_size: int = 16
) -> Evaluation:
    """Score every series of `records`; unreadable slices are skipped, counted and logged."""
    ids: list[str] = []
    series_of: list[str] = []
    truths: list[np.ndarray] = []
    probs: list[np.ndarray] = []
    skipped: list[str] = []
    spent: list[float] = []
    for series in group_series(records):
        slices, kept = [], []
        spacing = None
        for record in series:
            try:
                ds, hu = load_slice(record.path)
                if hu.shape[0] != 1:
                    raise SliceError(f"{hu.shape[0]} frames; labels are per single-frame slice")
            except SliceError as exc:
                logger.warning("skipping %s: %s", record.image_id, exc)
                skipped.append(record.image_id)
                continue
            slices.append(hu[0])
            kept.append(record)
            spacing = spacing or pixel_spacing_of(ds)  # the series' first, as the node takes
        if not kept:
            continue
        started = time.perf_counter()
        prediction = classifier.predict_series(slices, batch_size=batch_size,
                                               pixel_spacing=spacing)
        spent.append(time.perf_counter() - started)
        ids += [r.image_id for r in kept]
        series_of += [kept[0].series_uid] * len(kept)
        truths.append(np.stack([r.labels for r in kept]).astype(np.float64))
        probs.append(prediction.per_slice.astype(np.float64))
    if not truths:
        raise ValueError("records: no readable slice to score")
    y, prob = np.concatenate(truths), np.concatenate(probs)
    thresholds = classifier.card.thresholds
    _, y_series, p_series = series_level(series_of, y, prob)
    return Evaluation(
        card=classifier.card, image_ids=tuple(ids), series_uids=tuple(series_of), y=y, prob=prob,
        image=evaluate(y, prob, thresholds), series=evaluate(y_series, p_series, thresholds),
        skipped=tuple(skipped), seconds_per_series=float(np.mean(spent)),
    )  # fmt: skip


def model_summary(card: ModelCard) -> dict[str, Any]:
    """What a reader of a report needs to know about the model."""
    return {
        "architecture": card.architecture, "input_size": card.input_size,
        "windows": list(card.windows), "context": card.context, "labels": list(card.labels),
        "thresholds": card.thresholds, "training_data": card.training_data,
        "intended_use": card.intended_use, "sha256": card.sha256,
        "code_version": card.code_version, "created_at": card.created_at,
    }  # fmt: skip


def level_dict(metrics: Metrics) -> dict[str, Any]:
    """JSON-friendly metrics of one level; "auc" holds the micro AUC and one AUC per label."""
    data = metrics.to_dict()
    data["auc"] = {"micro": data["auc"], **{n: m["auc"] for n, m in data["per_label"].items()}}
    return data


def to_json(evaluation: Evaluation) -> dict[str, Any]:
    return {
        "model": model_summary(evaluation.card),
        "data": {"images": len(evaluation.image_ids), "series": evaluation.series.n,
                 "skipped": len(evaluation.skipped),
                 "seconds_per_series": round(evaluation.seconds_per_series, 4)},  # fmt: skip
        "image": level_dict(evaluation.image),
        "series": level_dict(evaluation.series),
    }


def _f(value: float) -> str:
    return "n/a" if value != value else f"{value:.4f}"


def metric_lines(levels: dict[str, Metrics]) -> list[str]:
    """Side-by-side text of one or more levels (e.g. image and series): the study's figures
    at 0.5, then each label's AUC and its sensitivity and specificity at the threshold."""
    names = list(levels)
    lines = [f"{'':28}" + "".join(f"{n:>16}" for n in names)]
    for title, get in (("loss (mean BCE)", lambda m: _f(m.loss)),
                       ("accuracy at 0.5", lambda m: _f(m.accuracy)),
                       ("TP/FP/TN/FN at 0.5", lambda m: f"{m.tp}/{m.fp}/{m.tn}/{m.fn}"),
                       ("AUC (micro)", lambda m: _f(m.auc)),
                       ("weighted log loss (RSNA)", lambda m: _f(m.weighted_log_loss))):  # fmt: skip
        lines.append(f"{title:28}" + "".join(f"{get(levels[n]):>16}" for n in names))
    lines += ["", f"{'':28}" + "".join(f"   {n:^23}" for n in names),
              f"{'label':18}{'threshold':>10}"
              + f"   {'AUC':>7} {'sens':>7} {'spec':>7}" * len(names)]  # fmt: skip
    for label in LABELS:
        first = levels[names[0]].per_label[label]
        row = f"{label:18}{first.threshold:>10.3f}"
        for n in names:
            m = levels[n].per_label[label]
            row += f"   {_f(m.auc):>7} {_f(m.sensitivity):>7} {_f(m.specificity):>7}"
        lines.append(row)
    lines.append("(sensitivity and specificity at the threshold)")
    return lines


def format_report(evaluation: Evaluation) -> str:
    """A plain-text report of both levels, with the model and the data it was scored on."""
    card = evaluation.card
    head = [
        f"model: {card.architecture}, {card.input_size} px, windows {'/'.join(card.windows)}, "
        f"context {card.context}, sha256 {card.sha256[:12]}",
        f"trained on: {card.training_data}",
        f"data: {len(evaluation.image_ids)} images in {evaluation.series.n} series"
        f" ({len(evaluation.skipped)} skipped); {evaluation.seconds_per_series:.3f} s per series",
        "",
    ]
    return "\n".join(head + metric_lines({"image": evaluation.image, "series": evaluation.series}))
