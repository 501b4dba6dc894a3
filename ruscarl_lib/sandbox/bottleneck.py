"""Evidence for the exploration bottleneck (METHOD.md sections 1 and 8).

Plain GRPO learns only from reward differences inside a group of G samples of one prompt.
If the unhinted policy, under the paper's truncated sampling, scores about the same on every
sample (here: about zero), every advantage is zero and there is nothing to learn. The same
policy with the rubric shown as a scaffold scores high, so scaffolded rollouts do carry
signal. `bottleneck_report` measures both on held-out tasks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

from ruscarl_lib.judges.scoring import aggregate_score
from ruscarl_lib.sandbox.evaluate import SANDBOX_SAMPLING, sample_and_grade
from ruscarl_lib.evaluate.generate import SamplingConfig
from ruscarl_lib.sandbox.world import World

__all__ = ["BottleneckReport", "bottleneck_report", "group_stats"]


@dataclass
class BottleneckReport:
    """Scores and within-group reward spread, unhinted vs fully hinted."""

    split: str
    n_tasks: int
    group_size: int
    sampling: dict[str, Any]
    unhinted_score: float  # HealthBench aggregate: clip(mean, 0, 1)
    unhinted_mean: float  # unclipped mean per-sample score (can be negative)
    unhinted_positive_rate: float  # share of samples meeting at least one positive criterion
    unhinted_harm_rate: float  # share of samples meeting at least one negative criterion
    unhinted_group_std: float  # mean within-group reward std
    unhinted_zero_var_groups: float  # share of groups whose rewards are all equal
    unhinted_zero_positive_groups: float  # share of groups with no positive criterion met at all
    hinted_score: float
    hinted_mean: float
    hinted_positive_rate: float
    hinted_harm_rate: float
    hinted_group_std: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"{self.split}: {self.n_tasks} tasks x G={self.group_size} | unhinted score "
            f"{self.unhinted_score:.3f} (raw mean {self.unhinted_mean:+.3f}, positive-criterion hits in "
            f"{self.unhinted_positive_rate:.1%} of samples, within-group std {self.unhinted_group_std:.3f}, "
            f"{self.unhinted_zero_var_groups:.0%} of groups zero-variance) | hinted score "
            f"{self.hinted_score:.3f} (within-group std {self.hinted_group_std:.3f})"
        )


def group_stats(df: pd.DataFrame) -> dict[str, float]:
    """Per-group reward spread of a `sample_and_grade` table."""
    g = df.groupby("example_id")
    std = g["score"].std(ddof=0)
    return {
        "group_std": float(std.mean()),
        "zero_var_groups": float((std < 1e-9).mean()),
        "zero_positive_groups": float((g["n_positive_met"].max() == 0).mean()),
    }


def bottleneck_report(
    policy: Any,
    world: World,
    *,
    split: str = "heldout",
    n_tasks: int | None = None,
    group_size: int = 8,
    sampling: SamplingConfig = SANDBOX_SAMPLING,
    seed: int = 0,
    return_samples: bool = False,
) -> BottleneckReport | tuple[BottleneckReport, pd.DataFrame]:
    """Sample G answers per task with and without the full-rubric scaffold and grade them.

    `policy` is a `SandboxPolicy` (or anything with `.model` and `.tokenizer`).
    """
    examples = world.split(split)
    if n_tasks is not None:
        examples = examples[:n_tasks]
    tables = []
    for hinted in (False, True):
        tables.append(
            sample_and_grade(
                policy.model, policy.tokenizer, examples, n=group_size, hinted=hinted, sampling=sampling, seed=seed
            )
        )
    plain, hint = tables

    def side(df: pd.DataFrame) -> dict[str, float]:
        stats = group_stats(df)
        return {
            "score": aggregate_score(df.groupby("example_id")["score"].mean(), n_bootstrap=0).score,
            "mean": float(df["score"].mean()),
            "positive_rate": float((df["n_positive_met"] > 0).mean()),
            "harm_rate": float((df["n_negative_met"] > 0).mean()),
            **stats,
        }

    u, h = side(plain), side(hint)
    report = BottleneckReport(
        split=split,
        n_tasks=len(examples),
        group_size=group_size,
        sampling=asdict(sampling),
        unhinted_score=u["score"],
        unhinted_mean=u["mean"],
        unhinted_positive_rate=u["positive_rate"],
        unhinted_harm_rate=u["harm_rate"],
        unhinted_group_std=u["group_std"],
        unhinted_zero_var_groups=u["zero_var_groups"],
        unhinted_zero_positive_groups=u["zero_positive_groups"],
        hinted_score=h["score"],
        hinted_mean=h["mean"],
        hinted_positive_rate=h["positive_rate"],
        hinted_harm_rate=h["harm_rate"],
        hinted_group_std=h["group_std"],
    )
    if return_samples:
        return report, pd.concat(tables, ignore_index=True)
    return report
