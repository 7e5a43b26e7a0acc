"""The promotion gate's rule, on series-level metrics computed from known arrays."""

from __future__ import annotations

import numpy as np
import pytest

from ml.gate import GateMetric, decide
from ml.labels import LABELS
from ml.metrics import Metrics, evaluate

Y = np.array([[1, 1, 0, 0, 0, 0], [1, 0, 1, 0, 0, 0], [1, 0, 0, 0, 1, 0], [1, 0, 0, 0, 0, 1],
              [0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]],
             dtype=float)


def measured(prob_any: list[float], *, noise: float = 0.0) -> Metrics:
    """Metrics of a model whose 'any' scores are `prob_any`, subtypes the truth +/- noise."""
    prob = np.clip(Y * (1 - noise) + (1 - Y) * noise, 0.0, 1.0)
    prob[:, 0] = prob_any
    return evaluate(Y, prob, dict.fromkeys(LABELS, 0.5))


GOOD = [0.9, 0.9, 0.8, 0.7, 0.1, 0.2, 0.1, 0.3]  # every bleed found, well separated
ZERO_STEP = [0.5] * 8  # untrained: one score for everything
MISSES_ONE = [0.95, 0.95, 0.95, 0.3, 0.02, 0.02, 0.02, 0.02]  # sharper, but a bleed missed


def test_a_better_candidate_that_keeps_sensitivity_is_promoted() -> None:
    decision = decide(measured(GOOD, noise=0.05), measured(GOOD, noise=0.3),
                      metric="weighted_log_loss")
    assert decision.promote and decision.candidate_score < decision.active_score
    assert decision.reason.startswith("gate on 8 held-out series: weighted log loss")
    assert (decision.candidate_sensitivity_any, decision.required_sensitivity_any) == (1.0, 0.95)


def test_a_zero_step_candidate_is_refused_with_the_reason() -> None:
    decision = decide(measured(ZERO_STEP, noise=0.5), measured(GOOD, noise=0.1),
                      metric=GateMetric.WEIGHTED_LOG_LOSS)
    assert not decision.promote
    assert "is not better than the active model's" in decision.reason
    assert not decide(measured(ZERO_STEP, noise=0.5), measured(GOOD, noise=0.1),
                      metric="auc_any").promote


def test_better_by_the_metric_but_losing_sensitivity_is_refused() -> None:
    active = measured([0.6, 0.6, 0.6, 0.6, 0.55, 0.4, 0.4, 0.4], noise=0.3)
    candidate = measured(MISSES_ONE, noise=0.05)
    assert candidate.weighted_log_loss < active.weighted_log_loss
    decision = decide(candidate, active, metric="weighted_log_loss")
    assert not decision.promote
    assert "sensitivity(any) 0.750 is below the required 0.950" in decision.reason


def test_unmeasurable_or_mismatched_sets_are_refused() -> None:
    one_class = evaluate(np.zeros((4, 6)), np.full((4, 6), 0.2), 0.5)
    assert not decide(one_class, one_class, metric="auc_any").promote
    with pytest.raises(ValueError, match="different sets"):
        decide(measured(GOOD), one_class, metric="auc_any")
    with pytest.raises(ValueError, match="auc_anyy"):
        decide(measured(GOOD), measured(GOOD), metric="auc_anyy")
