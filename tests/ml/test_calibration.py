"""Temperature scaling and series-level operating points, checked against scikit-learn."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss, roc_auc_score, roc_curve

from ml.calibration import (
    apply_temperatures,
    centred,
    fit_temperature,
    fit_temperatures,
    series_operating_point,
    sigmoid,
)
from ml.checkpoint import ModelCard, save_checkpoint
from ml.inference import Classifier
from ml.labels import LABELS
from ml.models import build_model


def _overconfident(seed: int, n: int = 4000, factor: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from sigmoid(true logits); the model reports `factor` times those logits."""
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(0, 2, n)
    y = (rng.uniform(size=n) < sigmoid(true_logits)).astype(float)
    return y, factor * true_logits


def test_temperature_undoes_overconfidence_and_lowers_the_log_loss() -> None:
    y, logits = _overconfident(0)
    t = fit_temperature(y, logits)
    assert 3.4 < t < 4.6  # the factor the logits were inflated by
    before = log_loss(y, sigmoid(logits))
    after = log_loss(y, sigmoid(logits / t))
    assert after < before - 0.05
    grid = np.geomspace(0.5, 10, 400)  # brute force: nothing on the grid does better
    assert after <= min(log_loss(y, sigmoid(logits / g)) for g in grid) + 1e-4


def test_underconfident_models_get_a_temperature_below_one() -> None:
    y, logits = _overconfident(1, factor=0.3)
    assert 0.25 < fit_temperature(y, logits) < 0.36


def test_temperature_keeps_the_ranking() -> None:
    y, logits = _overconfident(2)
    both = np.stack([y, 1 - y], 1), np.stack([logits, -logits], 1)
    temps = fit_temperatures(*both, labels=("a", "b"))
    calibrated = apply_temperatures(both[1], temps, labels=("a", "b"))
    assert roc_auc_score(y, calibrated[:, 0]) == pytest.approx(roc_auc_score(y, logits))
    assert temps["a"] == pytest.approx(temps["b"], rel=1e-3)  # the mirrored task: the same T


def test_one_class_keeps_temperature_one() -> None:
    assert fit_temperature(np.ones(10), np.linspace(-3, 3, 10)) == 1.0


def _series_case(seed: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """60 series of 6 slices; the bleed series have a few slices with high scores."""
    rng = np.random.default_rng(seed)
    ids, ys, ps = [], [], []
    for s in range(60):
        bleed = s % 3 != 0
        y = np.zeros((6, len(LABELS)))
        p = rng.uniform(0, 0.5, (6, len(LABELS)))
        if bleed:
            k = rng.integers(0, 6)
            y[k, 0] = y[k, 5] = 1
            p[k, 0] = p[k, 5] = rng.uniform(0.3, 1.0)
        ids += [f"s{s}"] * 6
        ys.append(y)
        ps.append(p)
    return ids, np.concatenate(ys), np.concatenate(ps)


def test_series_operating_point_meets_the_target_with_the_best_specificity() -> None:
    ids, y, p = _series_case(3)
    point = series_operating_point(ids, y, p, target={"any": 0.95})
    any_series = point.series.per_label["any"]
    assert any_series.sensitivity >= 0.95
    # scikit-learn's ROC over the series maxima: the best specificity at >= 95% sensitivity
    y_series = y[:, 0].reshape(60, 6).max(1)
    p_series = p[:, 0].reshape(60, 6).max(1)
    fpr, tpr, _ = roc_curve(y_series, p_series)
    assert any_series.specificity == pytest.approx(1 - fpr[tpr >= 0.95].min())
    assert point.summary()["achieved"]["any"]["sensitivity"] == any_series.sensitivity
    assert point.series.n == 60 and point.image.n == 360


def test_series_operating_point_keeps_the_subtype_specificity_floor() -> None:
    ids, y, p = _series_case(3)
    floor = {name: 0.95 for name in LABELS if name != "any"}
    plain = series_operating_point(ids, y, p, target={"any": 0.95})
    point = series_operating_point(ids, y, p, target={"any": 0.95}, floor=floor)
    assert point.series.per_label["subdural"].specificity >= 0.95
    assert point.thresholds["subdural"] >= plain.thresholds["subdural"]
    assert point.thresholds["any"] == plain.thresholds["any"]
    assert point.summary()["minimum_specificity"]["subdural"] == 0.95


def test_centring_stays_in_the_gap_without_negatives() -> None:
    truth = np.array([False, False, True, True])
    score = np.array([0.2, 0.4, 0.9, 0.99])
    t = centred(truth, score, 0.9)
    assert 0.4 < t < 0.9
    assert centred(np.ones(3, bool), score[:3], 0.5) == 0.5


def test_classifier_applies_the_cards_temperature(tmp_path: Path) -> None:
    torch.manual_seed(0)
    card = ModelCard.new("ichnet", windows=("brain", "subdural", "bone"), input_size=32,
                         training_data="random weights; unit test")  # fmt: skip
    model = build_model("ichnet", in_channels=card.in_channels, input_size=32)
    save_checkpoint(tmp_path / "plain.pt", model, card)
    hot = dataclasses.replace(card, temperature={"any": 3.0})
    save_checkpoint(tmp_path / "hot.pt", model, hot)
    slices = [np.random.default_rng(k).normal(30, 300, (40, 40)) for k in range(3)]
    plain = Classifier.load(tmp_path / "plain.pt", device="cpu").predict_series(slices).per_slice
    warm = Classifier.load(tmp_path / "hot.pt", device="cpu").predict_series(slices).per_slice
    logit = np.log(plain / (1 - plain))
    np.testing.assert_allclose(warm[:, 0], sigmoid(logit[:, 0] / 3.0), atol=1e-5)
    np.testing.assert_allclose(warm[:, 1:], plain[:, 1:], atol=1e-7)


def test_cards_refuse_bad_temperatures() -> None:
    card = ModelCard.new("ichnet", windows=("brain",), training_data="x")
    with pytest.raises(ValueError, match="temperature"):
        dataclasses.replace(card, temperature={"any": 0.0})
    with pytest.raises(ValueError, match="temperature"):
        dataclasses.replace(card, temperature={"nope": 1.0})
