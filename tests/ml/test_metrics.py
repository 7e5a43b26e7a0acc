"""Metrics against values computed by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_curve as sklearn_roc_curve

from ml.labels import LABELS
from ml.metrics import (
    accuracy,
    auc,
    choose_thresholds,
    confusion,
    evaluate,
    plot_roc,
    roc_curve,
    series_level,
    weighted_log_loss,
)


def test_auc_of_a_known_ranking() -> None:
    # positives 0.35, 0.8 against negatives 0.1, 0.4: 3 of 4 pairs ordered right
    assert auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)


def test_auc_counts_ties_as_half() -> None:
    # pairs (pos, neg): (.5,.5) tie = 0.5, (.5,.2) 1, (.9,.5) 1, (.9,.2) 1 -> 3.5 / 4
    assert auc(np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.2, 0.9])) == pytest.approx(0.875)


def test_auc_is_nan_with_one_class() -> None:
    assert math.isnan(auc(np.array([1, 1, 1]), np.array([0.2, 0.5, 0.9])))
    assert math.isnan(auc(np.array([0, 0]), np.array([0.2, 0.5])))


def test_roc_curve_points_and_area() -> None:
    fpr, tpr, thresholds = roc_curve(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1])
    np.testing.assert_allclose(thresholds, [np.inf, 0.8, 0.4, 0.35, 0.1])
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert area == pytest.approx(0.75)


def test_weighted_log_loss_by_hand() -> None:
    y = np.array([[1, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0]])
    p = np.array([[0.9, 0.1, 0.2, 0.1, 0.1, 0.6], [0.2, 0.1, 0.1, 0.1, 0.1, 0.0]])
    ln = math.log
    row1 = (2 * -ln(0.9) - ln(0.9) - ln(0.8) - ln(0.9) - ln(0.9) - ln(0.6)) / 7
    row2 = (2 * -ln(0.8) - 4 * ln(0.9) - ln(1 - 1e-7)) / 7  # p = 0 is clipped to 1e-7
    assert weighted_log_loss(y, p) == pytest.approx((row1 + row2) / 2, rel=1e-9)


def test_weighted_log_loss_clips_certain_mistakes() -> None:
    y = np.zeros((1, 6))
    y[0, 0] = 1
    p = np.zeros((1, 6))  # "any" certain and wrong
    assert weighted_log_loss(y, p) == pytest.approx(2 * -math.log(1e-7) / 7 + 5 * -math.log(1 - 1e-7) / 7)


def _example() -> tuple[np.ndarray, np.ndarray]:
    y = np.zeros((4, 6))
    p = np.full((4, 6), 0.1)
    y[:, 0] = [1, 1, 0, 0]
    p[:, 0] = [0.9, 0.3, 0.6, 0.2]  # at 0.5: TP, FN, FP, TN
    y[:, 5] = [1, 0, 0, 0]
    p[:, 5] = [0.7, 0.1, 0.1, 0.1]  # at 0.5: TP, TN, TN, TN
    return y, p


def test_confusion_counts_per_label() -> None:
    y, p = _example()
    counts = confusion(y, p, 0.5)
    assert (counts["any"].tp, counts["any"].fp, counts["any"].tn, counts["any"].fn) == (1, 1, 1, 1)
    assert (counts["subdural"].tp, counts["subdural"].tn) == (1, 3)
    assert counts["epidural"].tn == 4 and counts["epidural"].tp == 0
    at_low = confusion(y, p, {name: 0.25 for name in LABELS})
    assert (at_low["any"].tp, at_low["any"].fp, at_low["any"].fn) == (2, 1, 0)
    assert at_low["any"].sensitivity == 1.0 and at_low["any"].specificity == 0.5


def test_accuracy_over_all_label_decisions() -> None:
    y, p = _example()
    assert accuracy(y, p) == pytest.approx(22 / 24)  # only "any" rows 2 and 3 are wrong


def test_choose_thresholds_any_reaches_its_sensitivity() -> None:
    rng = np.random.default_rng(0)
    y = np.zeros((200, 6))
    y[:40, 0] = 1
    y[:10, 2] = 1
    p = rng.uniform(0, 1, (200, 6)) * 0.5
    p[:40, 0] += 0.4
    p[:10, 2] += 0.5
    chosen = choose_thresholds(y, p)
    any_scores = np.sort(p[:40, 0])[::-1]
    assert chosen["any"] == any_scores[37]  # ceil(0.95 * 40) = 38th highest positive
    counts = confusion(y, p, chosen)
    assert counts["any"].sensitivity >= 0.95
    higher = confusion(y, p, {**chosen, "any": np.nextafter(chosen["any"], 1)})
    assert higher["any"].sensitivity < 0.95
    assert chosen["epidural"] == 0.5  # no positives: the fallback
    assert counts["intraparenchymal"].sensitivity == 1.0  # separable: Youden finds the gap
    assert counts["intraparenchymal"].specificity == 1.0


def test_a_specificity_floor_raises_a_subtypes_youden_point_only_where_needed() -> None:
    rng = np.random.default_rng(1)
    y = np.zeros((300, 6))
    y[:60, 4] = y[:60, 5] = 1
    p = rng.uniform(0, 1, (300, 6))
    p[:60, 4] = rng.uniform(0.3, 1.0, 60)  # subarachnoid: overlapping, Youden calls many negatives
    p[:60, 5] = rng.uniform(0.8, 1.0, 60)
    p[60:, 5] = rng.uniform(0.0, 0.7, 240)  # subdural: separable, Youden is already specific
    youden = choose_thresholds(y, p)
    floored = choose_thresholds(y, p, min_specificity={"subarachnoid": 0.95, "subdural": 0.95})
    plain, raised = confusion(y, p, youden), confusion(y, p, floored)
    assert plain["subarachnoid"].specificity < 0.95 <= raised["subarachnoid"].specificity
    assert floored["subdural"] == youden["subdural"] and raised["subdural"].specificity == 1.0
    assert floored["any"] == youden["any"]  # a label with a sensitivity target keeps it
    # the lowest such threshold: scikit-learn's ROC, the most sensitive point at fpr <= 0.05
    fpr, tpr, _ = sklearn_roc_curve(y[:, 4], p[:, 4])
    assert raised["subarachnoid"].sensitivity == pytest.approx(tpr[fpr <= 0.05].max())
    with pytest.raises(ValueError, match="unknown labels"):
        choose_thresholds(y, p, min_specificity={"subdurall": 0.9})
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        choose_thresholds(y, p, min_specificity={"subdural": 1.5})


def test_evaluate_reports_the_study_figures() -> None:
    y, p = _example()
    metrics = evaluate(y, p, 0.5)
    assert (metrics.tp, metrics.fp, metrics.tn, metrics.fn) == (2, 1, 20, 1)
    assert metrics.accuracy == pytest.approx(22 / 24)
    assert metrics.n == 4
    bce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert metrics.loss == pytest.approx(bce.mean())
    assert metrics.weighted_log_loss == pytest.approx(weighted_log_loss(y, p))
    assert metrics.auc == pytest.approx(auc(y.ravel(), p.ravel()))
    assert metrics.per_label["any"].auc == pytest.approx(0.75)
    assert math.isnan(metrics.per_label["epidural"].auc)
    data = metrics.to_dict()
    assert data["per_label"]["epidural"]["auc"] is None
    assert data["per_label"]["any"]["sensitivity"] == 0.5
    json.dumps(data, allow_nan=False)


def test_series_level_takes_the_max_per_label() -> None:
    y = np.array([[0, 0], [1, 0], [0, 0], [0, 1]], dtype=float)
    p = np.array([[0.1, 0.2], [0.7, 0.1], [0.3, 0.3], [0.2, 0.9]])
    ids, ys, ps = series_level(["a", "a", "b", "b"], y, p)
    assert ids == ["a", "b"]
    np.testing.assert_array_equal(ys, [[1, 0], [0, 1]])
    np.testing.assert_allclose(ps, [[0.7, 0.2], [0.3, 0.9]])


def test_mismatched_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="y_true, prob"):
        weighted_log_loss(np.zeros((2, 6)), np.zeros((3, 6)))
    with pytest.raises(ValueError, match="thresholds"):
        confusion(np.zeros((2, 6)), np.zeros((2, 6)), {"any": 0.5})


def test_plot_roc_writes_a_png(tmp_path: Path) -> None:
    y, p = _example()
    path = plot_roc(y, p, tmp_path / "roc.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
