"""The evaluation report folder: files, curves against scikit-learn, the worst series."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import precision_recall_curve

from ml.checkpoint import ModelCard
from ml.evaluate import Evaluation
from ml.labels import LABELS
from ml.metrics import evaluate, series_level
from ml.report import precision_recall, reliability, worst_series, write_report


def _evaluation() -> Evaluation:
    rng = np.random.default_rng(0)
    series = [f"s{k}" for k in range(8) for _ in range(5)]
    y = np.zeros((40, len(LABELS)))
    for k in (1, 3, 5, 7):  # bleed series: two slices each
        y[5 * k + 1 : 5 * k + 3, [0, 5]] = 1
    prob = np.clip(y * 0.7 + rng.uniform(0, 0.3, y.shape), 0, 1)
    prob[5 * 2 + 3, 0] = 0.95  # series s2, no bleed: the worst false positive
    prob[5 * 7 + 1 : 5 * 7 + 3, 0] = 0.2  # series s7's bleed scores low: the worst false negative
    card = ModelCard.new("ichnet", windows=("brain", "subdural", "bone"), training_data="test",
                         thresholds=dict.fromkeys(LABELS, 0.5))  # fmt: skip
    _, ys, ps = series_level(series, y, prob)
    return Evaluation(card, tuple(f"i{k}" for k in range(40)), tuple(series), y, prob,
                      evaluate(y, prob, card.thresholds), evaluate(ys, ps, card.thresholds), (),
                      0.01)  # fmt: skip


def test_precision_recall_matches_scikit_learn() -> None:
    rng = np.random.default_rng(1)
    y = rng.uniform(size=200) < 0.3
    score = np.round(rng.uniform(size=200) + 0.3 * y, 2)  # ties too
    precision, recall = precision_recall(y, score)
    ref_p, ref_r, _ = precision_recall_curve(y, score)
    ours = sorted(zip(recall.round(9), precision.round(9), strict=True))
    theirs = sorted(zip(ref_r[:-1].round(9), ref_p[:-1].round(9), strict=True))
    assert ours == theirs


def test_reliability_bins_and_ece() -> None:
    y = np.array([0, 0, 1, 1, 1, 0])
    p = np.array([0.05, 0.15, 0.95, 0.85, 0.55, 0.45])
    table = reliability(y, p)
    assert [b["n"] for b in table["bins"]] == [1, 1, 1, 1, 1, 1]
    expected = np.mean(np.abs(p - y))  # one item per bin
    assert table["ece"] == pytest.approx(expected)


def test_worst_series_are_the_confident_mistakes() -> None:
    worst = worst_series(_evaluation(), count=1)
    assert worst == {"false_positive": ["s2"], "false_negative": ["s7"]}


def test_report_folder_holds_the_plots_and_the_json(tmp_path: Path) -> None:
    files = write_report(_evaluation(), tmp_path / "report")
    for name in ("roc", "pr", "reliability", "confusion", "worst_series"):
        assert files[name].read_bytes()[:4] == b"\x89PNG", name
    report = json.loads(files["json"].read_text())
    assert report["series"]["n"] == 8 and report["image"]["n"] == 40
    assert set(report["reliability"]) == set(LABELS)
    assert report["worst_series"]["false_positive"][0] == "s2"
