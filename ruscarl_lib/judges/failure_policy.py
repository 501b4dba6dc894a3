"""The judge-failure policy: how a criterion whose verdict could not be obtained counts.

A judge can fail on a criterion (a timeout, an unparsable answer, a context overflow); its
verdict is then `None`, and `judge.failure_policy` (evaluation) or
`judge.train_failure_policy` (the RL reward) decides:

- `exclude`: drop the criterion from numerator and denominator (score what was judged);
- `worst_case`: a failed positive counts as not met, a failed negative as met (a lower bound).
  The training default: otherwise an answer that makes the judge fail (one too long for its
  context, say) escapes its penalties, and RL finds that;
- `not_met`: every failed criterion counts as not met. This is the reference code's
  behaviour; for negative criteria it silently removes the penalty, so it flatters scores.

Training also stops when the failure rate stays high (`train.reward.JudgeFailureGuard`).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import pandas as pd

FailurePolicy = Literal["exclude", "worst_case", "not_met"]
FAILURE_POLICIES: tuple[str, ...] = ("exclude", "worst_case", "not_met")


def check_policy(failure_policy: str) -> None:
    if failure_policy not in FAILURE_POLICIES:
        raise ValueError(f"unknown failure_policy {failure_policy!r}; expected one of {FAILURE_POLICIES}")


def is_failed(verdict: Any) -> bool:
    """A missing verdict: None, NaN or pandas NA (tables may turn None into either)."""
    if verdict is None or verdict is pd.NA:
        return True
    return isinstance(verdict, float) and math.isnan(verdict)


def counted_met(points: float, verdict: Any, failure_policy: FailurePolicy) -> bool | None:
    """Whether a criterion counts as met in a score; None: it is left out (failed, `exclude`)."""
    if not is_failed(verdict):
        return bool(verdict)
    if failure_policy == "exclude":
        return None
    return points < 0 if failure_policy == "worst_case" else False
