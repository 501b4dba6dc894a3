"""Scaffold schedules: the share of the rubric each rollout sees (METHOD.md section 4).

Sample i of a group of G at training step t gets the ratio

    lambda_i(t) = step_decay(t) * intra_group(i)

so one group always spans "full hints" to "no hints", and the hints fade out as training
goes on. The dataset-level views (expected criteria shown, a table of a few steps) are what
the schedule-tuning notebook draws.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Sequence

import numpy as np

from ruscarl_lib.scaffold.selection import n_shown

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pandas as pd

    from ruscarl_lib.params import ScaffoldParams


IntraGroupRule = Literal["linear", "binary"]
StepDecayRule = Literal["sigmoid", "constant", "linear", "power"]

INTRA_GROUP_RULES: tuple[str, ...] = ("linear", "binary")
STEP_DECAY_RULES: tuple[str, ...] = ("sigmoid", "constant", "linear", "power")

__all__ = [
    "INTRA_GROUP_RULES",
    "STEP_DECAY_RULES",
    "ScaffoldSchedule",
    "expected_criteria_shown",
    "intra_group_ratio",
    "schedule_table",
    "step_decay",
]


# --------------------------------------------------------------------------------------------
# Schedule
# --------------------------------------------------------------------------------------------


def _check_group(group_size: int) -> None:
    if not isinstance(group_size, (int, np.integer)) or group_size < 1:
        raise ValueError(f"group_size must be a positive integer, got {group_size!r}")


def _binary_k(group_size: int, binary_k: int | None) -> int:
    k = group_size // 2 if binary_k is None else int(binary_k)
    if not 0 <= k <= group_size:
        raise ValueError(f"binary_k must lie in [0, group_size={group_size}], got {binary_k}")
    return k


def _intra_array(group_size: int, rule: str, binary_k: int | None) -> np.ndarray:
    """Intra-group ratios of every sample of a group, shape (G,)."""
    _check_group(group_size)
    idx = np.arange(group_size, dtype=np.float64)
    if rule == "linear":
        if group_size == 1:
            return np.ones(1)
        return (group_size - 1 - idx) / (group_size - 1)
    if rule == "binary":
        k = _binary_k(group_size, binary_k)
        return (idx < k).astype(np.float64)
    raise ValueError(f"unknown intra-group rule {rule!r}; expected one of {INTRA_GROUP_RULES}")


def intra_group_ratio(
    group_position: int, group_size: int, rule: str = "linear", binary_k: int | None = None
) -> float:
    """Share of the rubric the sample at `group_position` (0-based) in its group may see.

    `linear` spreads the group evenly from 1 (first sample) to 0 (last), so every group mixes
    heavily hinted and unhinted rollouts; `binary` gives the first `binary_k` (default G // 2)
    samples the full rubric and the rest nothing (an ablation in the paper).
    """
    _check_group(group_size)
    if not 0 <= group_position < group_size:
        raise ValueError(f"group_position must lie in [0, {group_size}), got {group_position}")
    return float(_intra_array(group_size, rule, binary_k)[group_position])


def _progress(step: Any, total_steps: int) -> np.ndarray:
    """Training progress t in [0, 1] for 1-based steps (array in, array out)."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    step = np.asarray(step, dtype=np.float64)
    if total_steps == 1:
        return np.zeros_like(step)
    return np.clip((step - 1.0) / (total_steps - 1.0), 0.0, 1.0)


def _decay_of_progress(
    t: np.ndarray, rule: str, alpha: float, t0: float, power: float
) -> np.ndarray:
    if rule == "sigmoid":
        # 1 / (1 + exp(x)) written so that exp never sees a large positive argument.
        x = alpha * (t - t0)
        e = np.exp(-np.abs(x))
        return np.where(x > 0, e / (1.0 + e), 1.0 / (1.0 + e))
    if rule == "constant":
        return np.ones_like(t)
    if rule == "linear":
        return 1.0 - t
    if rule == "power":
        return (1.0 - t) ** power
    raise ValueError(f"unknown step-decay rule {rule!r}; expected one of {STEP_DECAY_RULES}")


def step_decay(
    step: int,
    total_steps: int,
    rule: str = "sigmoid",
    alpha: float = 125.0,
    t0: float = 0.2,
    power: float = 2.0,
) -> float:
    """How much of the scaffold is still on at 1-based `step` of `total_steps`.

    The sigmoid keeps hints almost fully on early and removes them quickly around `t0`, so
    the policy first learns what good answers look like and then must produce them alone.
    Steps outside [1, total_steps] are clipped to the ends.
    """
    t = _progress(step, total_steps)
    return float(_decay_of_progress(t, rule, alpha, t0, power))


@dataclass(frozen=True)
class ScaffoldSchedule:
    """The scaffold-ratio schedule lambda_i(t); a frozen value so it can be logged and shared."""

    intra_group: str = "linear"
    binary_k: int | None = None
    step_decay: str = "sigmoid"
    alpha: float = 125.0
    t0: float = 0.2
    power: float = 2.0
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.intra_group not in INTRA_GROUP_RULES:
            raise ValueError(
                f"unknown intra-group rule {self.intra_group!r}; expected {INTRA_GROUP_RULES}"
            )
        if self.step_decay not in STEP_DECAY_RULES:
            raise ValueError(
                f"unknown step-decay rule {self.step_decay!r}; expected {STEP_DECAY_RULES}"
            )
        if self.binary_k is not None and self.binary_k < 0:
            raise ValueError(f"binary_k must be >= 0, got {self.binary_k}")

    @classmethod
    def from_params(cls, params: "ScaffoldParams") -> "ScaffoldSchedule":
        """Build from the `scaffold` section of the params file (rendering keys are ignored)."""
        return cls(
            intra_group=params.intra_group,
            binary_k=params.binary_k,
            step_decay=params.step_decay,
            alpha=float(params.alpha),
            t0=float(params.t0),
            power=float(params.power),
            enabled=bool(params.enabled),
        )

    def decay(self, step: int, total_steps: int) -> float:
        return step_decay(step, total_steps, self.step_decay, self.alpha, self.t0, self.power)

    def intra(self, group_position: int, group_size: int) -> float:
        return intra_group_ratio(group_position, group_size, self.intra_group, self.binary_k)

    def ratio(self, group_position: int, group_size: int, step: int, total_steps: int) -> float:
        """lambda for one rollout; 0 when scaffolding is switched off (plain rubric RL)."""
        intra = self.intra(group_position, group_size)  # validates even when disabled
        if not self.enabled:
            return 0.0
        return self.decay(step, total_steps) * intra

    def decay_curve(self, total_steps: int) -> np.ndarray:
        """Step decay at steps 1..total_steps, shape (total_steps,)."""
        t = _progress(np.arange(1, total_steps + 1), total_steps)
        return _decay_of_progress(t, self.step_decay, self.alpha, self.t0, self.power)

    def ratio_grid(self, group_size: int, total_steps: int) -> np.ndarray:
        """lambda for every sample (rows) and step 1..total_steps (columns), shape (G, T)."""
        intra = _intra_array(group_size, self.intra_group, self.binary_k)
        if not self.enabled:
            return np.zeros((group_size, total_steps))
        return np.outer(intra, self.decay_curve(total_steps))


def expected_criteria_shown(
    n_criteria_per_example: Sequence[int],
    schedule: ScaffoldSchedule,
    group_size: int,
    total_steps: int,
) -> np.ndarray:
    """Mean number of criteria revealed per sample slot and step over a dataset, shape (G, T).

    Uses the exact rounding of `n_shown` (numpy's round is also half-to-even) and groups
    examples by rubric size so a 5,000-example dataset stays cheap.
    """
    counts = np.asarray(list(n_criteria_per_example), dtype=np.int64)
    if counts.size == 0:
        raise ValueError("n_criteria_per_example is empty")
    if (counts < 0).any():
        raise ValueError("rubric sizes must be >= 0")
    grid = schedule.ratio_grid(group_size, total_steps)
    sizes, freq = np.unique(counts, return_counts=True)
    total = np.zeros_like(grid)
    for n, f in zip(sizes, freq):
        total += f * np.round(float(n) * grid)
    return total / counts.size


def schedule_table(
    schedule: ScaffoldSchedule,
    group_size: int,
    total_steps: int,
    n_criteria: int = 12,
    steps: Sequence[int] | None = None,
) -> "pd.DataFrame":
    """Decay, per-sample ratios and criteria shown (for an n-criterion rubric) at a few steps.

    Default steps: first and last, the sigmoid midpoint and the steps around it, so a reader
    sees when the scaffold fades out.
    """
    import pandas as pd

    if steps is None:
        mid = 1 + schedule.t0 * (total_steps - 1)
        picks = {1, total_steps, *(round(mid + d * (total_steps - 1) * 0.04) for d in (-1, 0, 1))}
        steps = sorted(s for s in picks if 1 <= s <= total_steps)
    rows = []
    for step in steps:
        ratios = [schedule.ratio(i, group_size, step, total_steps) for i in range(group_size)]
        rows.append({
            "step": step,
            "decay": round(schedule.decay(step, total_steps), 4),
            "ratios": [round(r, 3) for r in ratios],
            f"shown of {n_criteria}": [n_shown(n_criteria, r) for r in ratios],
        })
    return pd.DataFrame(rows)
