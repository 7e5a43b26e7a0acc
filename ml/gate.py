"""The promotion gate: a candidate replaces the active model only when, on the same held-out
set, it is better by the chosen metric **and** keeps the sensitivity of "any" at its own
operating threshold. Series-level figures: the node flags series, not slices.

"Keeps the sensitivity" means the candidate's sensitivity(any) is at least the active model's,
or at least `min_sensitivity_any` when the active model is above that floor: a candidate may
give back sensitivity the triage does not require, never what it does. A metric that cannot be
measured on the set (AUC with one class only) refuses: no evidence, no promotion.
"""

from __future__ import annotations

import enum
import math
from dataclasses import asdict, dataclass
from typing import Any

from ml.metrics import Metrics


class GateMetric(enum.StrEnum):
    WEIGHTED_LOG_LOSS = "weighted_log_loss"  # the RSNA 2019 score: lower is better
    AUC_ANY = "auc_any"  # AUC of "any": higher is better


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str
    metric: str
    candidate_score: float  # by `metric`, on the held-out set
    active_score: float
    candidate_sensitivity_any: float
    active_sensitivity_any: float
    required_sensitivity_any: float

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in asdict(self).items()}


def _value(metrics: Metrics, metric: GateMetric) -> float:
    if metric is GateMetric.WEIGHTED_LOG_LOSS:
        return float(metrics.weighted_log_loss)
    return float(metrics.per_label["any"].auc)


def decide(candidate: Metrics, active: Metrics, *, metric: GateMetric | str,
           min_sensitivity_any: float = 0.95, margin: float = 0.0) -> GateDecision:
    """Whether `candidate` may replace `active`, both measured on the same held-out series."""
    metric = GateMetric(metric)
    if not 0.0 < min_sensitivity_any <= 1.0:
        raise ValueError(f"min_sensitivity_any: must lie in (0, 1], got {min_sensitivity_any}")
    if margin < 0:
        raise ValueError(f"margin: must be >= 0, got {margin}")
    if candidate.n != active.n:
        raise ValueError(f"candidate and active were measured on different sets ({candidate.n} "
                         f"and {active.n} series)")
    new, old = _value(candidate, metric), _value(active, metric)
    new_sens = float(candidate.per_label["any"].sensitivity)
    old_sens = float(active.per_label["any"].sensitivity)
    required = min(old_sens, min_sensitivity_any) if math.isfinite(old_sens) \
        else min_sensitivity_any
    lower = metric is GateMetric.WEIGHTED_LOG_LOSS
    shown = metric.value.replace("_", " ")
    if not (math.isfinite(new) and math.isfinite(old)):
        promote, reason = False, f"{shown} cannot be measured on this set (one class only?)"
    elif not (new < old - margin if lower else new > old + margin):
        promote, reason = False, (f"{shown} {new:.4f} is not better than the active model's "
                                  f"{old:.4f}" + (f" by {margin:g}" if margin else ""))
    elif not (math.isfinite(new_sens) and new_sens >= required):
        promote, reason = False, (f"{shown} {new:.4f} beats {old:.4f}, but sensitivity(any) "
                                  f"{new_sens:.3f} is below the required {required:.3f}")
    else:
        promote, reason = True, (f"{shown} {new:.4f} beats the active model's {old:.4f}; "
                                 f"sensitivity(any) {new_sens:.3f} >= {required:.3f}")
    return GateDecision(promote, f"gate on {candidate.n} held-out series: {reason}",
                        metric.value, new, old, new_sens, old_sens, required)
