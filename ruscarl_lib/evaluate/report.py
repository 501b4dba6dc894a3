"""From verdicts to scores and the evaluation report (pure: tested without a model).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ruscarl_lib.common.json_values import json_ready
from ruscarl_lib.common.paths import (
    atomic_write_text,
)
from ruscarl_lib.evaluate.folder import REPORT_FILE
from ruscarl_lib.evaluate.grade import stats_dict
from ruscarl_lib.judges.failure_policy import FailurePolicy
from ruscarl_lib.judges.scoring import (
    VERDICT_COLUMNS,
    overall_score,
    score_examples,
    tag_scores,
)

__all__ = [
    "EvalReport",
    "build_report",
    "response_scores",
]


def _scoring_table(verdicts: pd.DataFrame) -> pd.DataFrame:
    """The scoring module's verdict table, one pseudo-example per response (`id#k`)."""
    table = pd.DataFrame({
        "example_id": verdicts["example_id"].astype(str) + "#" + verdicts["sample_index"].astype(int).astype(str),
        "criterion_index": verdicts["criterion_index"].astype(np.int64),
        "points": verdicts["points"].astype(np.float64),
        "met": [None if pd.isna(m) else bool(m) for m in verdicts["met"]],
        "criterion_tags": [tuple(t) for t in verdicts["criterion_tags"]],
        "example_tags": [tuple(t) for t in verdicts["example_tags"]],
    }, columns=list(VERDICT_COLUMNS))
    table["met"] = table["met"].astype(object)
    return table


def response_scores(verdicts: pd.DataFrame, failure_policy: FailurePolicy = "exclude") -> pd.DataFrame:
    """Per response: example_id, sample_index, unclipped rubric score (NaN: ungradable), n_failed."""
    if verdicts.empty:
        return pd.DataFrame(columns=["example_id", "sample_index", "score", "n_failed"])
    scored = score_examples(_scoring_table(verdicts), failure_policy)
    split = scored["example_id"].str.rsplit("#", n=1, expand=True)
    return pd.DataFrame({
        "example_id": split[0], "sample_index": split[1].astype(int),
        "score": scored["score"].to_numpy(), "n_failed": scored["n_failed"].to_numpy(),
    })


@dataclass
class EvalReport:
    """The numbers of one evaluation. `score`/`std` are HealthBench's clipped mean and its
    bootstrap std over all graded responses (resampling prompts with all their answers); `unclipped_score` the plain mean (negative when
    penalties outweigh points); `tags` holds every axis:/theme:/... score."""

    score: float
    std: float
    n_scored: int
    n_examples: int
    n_responses: int
    failure_policy: str
    tags: pd.DataFrame
    lengths: dict[str, float]
    verdicts: dict[str, Any]
    judge: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    unclipped_score: float = float("nan")

    @property
    def axis_scores(self) -> pd.DataFrame:
        return self.tags[self.tags["tag"].str.startswith("axis:")].reset_index(drop=True)

    @property
    def theme_scores(self) -> pd.DataFrame:
        return self.tags[self.tags["tag"].str.startswith("theme:")].reset_index(drop=True)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values; NaN becomes None."""
        d = {f: getattr(self, f) for f in self.__dataclass_fields__ if f != "tags"}
        d["tags"] = {r.tag: {"score": r.score, "std": r.std, "n": int(r.n)} for r in self.tags.itertuples()}
        return json_ready(d)

    def save(self, out_dir: str | Path) -> Path:
        """report.json and tag_scores.csv, each written atomically."""
        out = Path(out_dir)
        atomic_write_text(out / "tag_scores.csv", self.tags.to_csv(index=False))
        return atomic_write_text(out / REPORT_FILE, json.dumps(self.to_dict(), indent=2, default=_jsonable))

    def summary(self) -> str:
        return (f"HealthBench score {100 * self.score:.1f} +- {100 * self.std:.1f} "
                f"(unclipped mean {100 * self.unclipped_score:.1f}; {self.n_scored} responses to {self.n_examples} prompts, failure policy {self.failure_policy})")


def _jsonable(x: Any) -> Any:
    if hasattr(x, "item"):
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


def _prompt_of(pseudo_id: str) -> str:
    return str(pseudo_id).rsplit("#", 1)[0]


def build_report(
    verdicts: pd.DataFrame,
    responses: pd.DataFrame,
    *,
    failure_policy: FailurePolicy = "exclude",
    n_bootstrap: int = 1000,
    seed: int | None = 0,
    judge_stats: dict[str, Any] | Any = None,
) -> EvalReport:
    """HealthBench score, per-tag scores, response lengths and judge accounting of one evaluation."""
    table = _scoring_table(verdicts) if len(verdicts) else pd.DataFrame(columns=list(VERDICT_COLUMNS))
    # rows are answers (`id#k`); the bootstrap resamples prompts, all their answers together
    agg = overall_score(table, failure_policy, n_bootstrap=n_bootstrap, seed=seed, group_of=_prompt_of)
    tags = tag_scores(table, failure_policy, n_bootstrap=n_bootstrap, seed=seed, group_of=_prompt_of)
    n_tokens = responses["n_tokens"].to_numpy(dtype=np.float64) if "n_tokens" in responses else np.array([])
    chars = responses["response"].astype(str).str.len().to_numpy(dtype=np.float64)
    lengths = {
        "mean_chars": float(chars.mean()) if chars.size else math.nan,
        "median_chars": float(np.median(chars)) if chars.size else math.nan,
        "mean_tokens": float(n_tokens.mean()) if n_tokens.size else math.nan,
        "max_tokens": float(n_tokens.max()) if n_tokens.size else math.nan,
        "truncated_frac": float(responses["truncated"].mean()) if "truncated" in responses and len(responses) else math.nan,
    }
    failed = verdicts["failed"].astype(bool) if "failed" in verdicts else verdicts["met"].isna()
    kinds = verdicts.loc[failed, "failure_kind"].fillna("unknown").value_counts().to_dict() if "failure_kind" in verdicts else {}
    verdict_counts = {
        "n": int(len(verdicts)), "n_failed": int(failed.sum()),
        "failed_frac": float(failed.mean()) if len(verdicts) else math.nan,
        "failures": {str(k): int(v) for k, v in kinds.items()},
        "met_frac": float(verdicts["met"].dropna().astype(bool).mean()) if verdicts["met"].notna().any() else math.nan,
    }
    return EvalReport(
        score=agg.score, std=agg.std, n_scored=agg.n, unclipped_score=agg.unclipped,
        n_examples=int(responses["example_id"].nunique()), n_responses=int(len(responses)),
        failure_policy=str(failure_policy), tags=tags, lengths=lengths, verdicts=verdict_counts,
        judge=stats_dict(judge_stats),
    )
