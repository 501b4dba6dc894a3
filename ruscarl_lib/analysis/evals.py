"""Evaluation reports side by side: scores with confidence intervals, per-tag scores, Best-of-N.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd

from ruscarl_lib.analysis.curves import group_table
from ruscarl_lib.analysis.notes import with_missing
from ruscarl_lib.analysis.runs import TrainingRun, expand_paths, is_run_dir, short_labels
from ruscarl_lib.common.paths import resolve_path
from ruscarl_lib.train.run_folder import (
    read_metrics,
    read_rollouts,
)

__all__ = [
    "EvalResult",
    "eval_best_of_n",
    "eval_table",
    "eval_tag_table",
    "find_eval_dirs",
    "load_evals",
]


@dataclass
class EvalResult:
    """One evaluation folder written by `evaluate.run.run_evaluation` (report.json and friends)."""

    name: str
    path: Path
    report: dict[str, Any]
    scores: pd.DataFrame | None = None
    novelty: dict[str, Any] | None = None


def find_eval_dirs(patterns: str | Path | Iterable[str | Path]) -> list[Path]:
    """Evaluation folders (holding report.json) among paths and glob patterns."""
    from ruscarl_lib.evaluate.folder import REPORT_FILE

    return expand_paths(patterns, lambda p: (p / REPORT_FILE).is_file(), f"an evaluation folder (no {REPORT_FILE})")


def load_evals(patterns: str | Path | Iterable[str | Path]) -> list[EvalResult]:
    """Every evaluation folder among paths and glob patterns, with scores and novelty when saved."""
    from ruscarl_lib.evaluate.folder import REPORT_FILE

    dirs = find_eval_dirs(patterns) if patterns else []
    out = []
    for d, label in zip(dirs, short_labels(dirs)):
        scores = pd.read_parquet(d / "scores.parquet") if (d / "scores.parquet").is_file() else None
        novelty = json.loads((d / "novelty.json").read_text()) if (d / "novelty.json").is_file() else None
        out.append(EvalResult(label, d, json.loads((d / REPORT_FILE).read_text()), scores, novelty))
    return out


def as_float(x: Any) -> float:
    return float("nan") if x is None else float(x)


def normal_interval(score: float, std: float, z: float) -> tuple[float, float]:
    """score +- z std clipped to [0, 1]; NaN when either is unknown."""
    if not (math.isfinite(score) and math.isfinite(std)):
        return float("nan"), float("nan")
    return max(0.0, score - z * std), min(1.0, score + z * std)


def train_zero_variance_frac(adapter: str | Path | None) -> float:
    """Share of zero-variance groups over the training run that saved `adapter` (its run
    folder's rollout table, else its logged `frac_reward_zero_std`); NaN when unknown."""
    if not adapter:
        return float("nan")
    run_dir = resolve_path(adapter).parent
    if not is_run_dir(run_dir):
        return float("nan")
    run = TrainingRun(run_dir.name, run_dir, read_metrics(run_dir), read_rollouts(run_dir), None)
    groups = group_table([run])
    groups = groups[groups["zero_variance"].notna()] if len(groups) else groups
    if len(groups):
        return float(groups["zero_variance"].astype(float).mean())
    if "frac_reward_zero_std" in run.metrics:
        return float(run.metrics["frac_reward_zero_std"].mean())
    return float("nan")


def eval_table(evals: Sequence[EvalResult], z: float = 1.96) -> pd.DataFrame:
    """One row per evaluation: HealthBench score with a normal interval from its bootstrap std
    (score +- z std, clipped to [0, 1]), the unclipped mean score (negative when penalties
    outweigh points, which clipping hides), the zero-variance share of groups over the training
    run that produced the adapter (NaN for none), sizes, lengths, judge failures and novelty."""
    rows = []
    for e in evals:
        r = e.report
        score, std = as_float(r.get("score")), as_float(r.get("std"))
        extra = r.get("extra") or {}
        nov = (e.novelty or {}).get("novelty") or {}
        lo, hi = normal_interval(score, std, z)
        rows.append({
            "eval": e.name, "score": score, "std": std, "ci_low": lo, "ci_high": hi,
            "unclipped_score": as_float(r.get("unclipped_score")),
            "train_zero_var_frac": train_zero_variance_frac(extra.get("adapter")),
            "n_scored": r.get("n_scored"), "n_examples": r.get("n_examples"), "n_responses": r.get("n_responses"),
            "mean_tokens": as_float((r.get("lengths") or {}).get("mean_tokens")),
            "failed_frac": as_float((r.get("verdicts") or {}).get("failed_frac")),
            "model": extra.get("model"), "adapter": extra.get("adapter"),
            "novelty_median": as_float(nov.get("median_ratio")) if nov else float("nan"),
        })
    return pd.DataFrame(rows)


def eval_tag_table(
    evals: Sequence[EvalResult], prefixes: Sequence[str] = ("axis:", "theme:"), z: float = 1.96
) -> pd.DataFrame:
    """Long table (eval, tag, score, std, n, ci_low, ci_high): the overall score as tag
    `overall`, then every tag starting with one of `prefixes`."""
    rows = []
    for e in evals:
        r = e.report
        tags = {"overall": {"score": r.get("score"), "std": r.get("std"), "n": r.get("n_scored")}}
        tags.update({t: v for t, v in (r.get("tags") or {}).items() if t.startswith(tuple(prefixes))})
        for tag, v in tags.items():
            score, std = as_float(v.get("score")), as_float(v.get("std"))
            lo, hi = normal_interval(score, std, z)
            rows.append({"eval": e.name, "tag": tag, "score": score, "std": std, "n": v.get("n"),
                         "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows, columns=["eval", "tag", "score", "std", "n", "ci_low", "ci_high"])


def eval_best_of_n(evals: Sequence[EvalResult]) -> pd.DataFrame:
    """Best-of-N curves (`best_of_n.best_of_n_curves`) of the evaluations that sampled several
    answers per prompt; the others are listed as missing."""
    from ruscarl_lib.evaluate.best_of_n import best_of_n_curves

    frames, notes = {}, []
    for e in evals:
        if e.scores is None or e.scores.empty:
            notes.append(f"eval {e.name}: no scores.parquet")
        elif e.scores.groupby("example_id").size().max() < 2:
            notes.append(f"eval {e.name}: one answer per prompt, no Best-of-N")
        else:
            frames[e.name] = e.scores
    out = best_of_n_curves(frames) if frames else pd.DataFrame(columns=["model", "n", "expected_best", "sem", "n_prompts"])
    return with_missing(out, notes)
