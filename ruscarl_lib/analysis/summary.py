"""Headline numbers: per run (start and end of training), per evaluation, and the analysis
notebook's summary file, as plain JSON values.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from ruscarl_lib.analysis.criteria import shown_vs_hidden
from ruscarl_lib.analysis.curves import (
    group_table,
    length_reward_points,
    pearson,
    step_stats,
)
from ruscarl_lib.analysis.evals import EvalResult, as_float, eval_table, normal_interval
from ruscarl_lib.analysis.notes import missing, with_missing
from ruscarl_lib.analysis.runs import TrainingRun
from ruscarl_lib.common.json_values import json_ready

__all__ = [
    "analysis_summary",
    "eval_summary",
    "run_summary",
]


def _edge_mean(frame: pd.DataFrame, column: str, frac: float, last: bool) -> float:
    if column not in frame or frame[column].isna().all():
        return float("nan")
    values = frame.sort_values("rl_step")[column].dropna()
    k = max(1, round(len(values) * frac))
    return float((values.tail(k) if last else values.head(k)).mean())


def run_summary(runs: Sequence[TrainingRun], edge_frac: float = 0.1) -> pd.DataFrame:
    """One row per run: first/last values (means over the first/last `edge_frac` of steps) of
    reward, length, KL and entropy; overall zero-variance fraction; last scaffolded step; the
    shown-minus-hidden met-rate gap of positive criteria; the length-reward correlation."""
    stats = step_stats(runs)
    groups = group_table(runs)
    shown = shown_vs_hidden(runs)
    points = length_reward_points(runs)
    rows = []
    for run in runs:
        s = stats[stats["run"] == run.name]
        row: dict[str, Any] = {"run": run.name, "rl_steps": int(s["rl_step"].nunique()) if len(s) else 0}
        for col in ("reward_mean", "completion_tokens_mean", "kl", "entropy", "scaffold_ratio_mean"):
            short = col.replace("_mean", "")
            row[f"{short}_first"] = _edge_mean(s, col, edge_frac, last=False)
            row[f"{short}_last"] = _edge_mean(s, col, edge_frac, last=True)
        g = groups[(groups["run"] == run.name) & groups["zero_variance"].notna()] if len(groups) else groups
        row["zero_var_frac"] = float(g["zero_variance"].astype(float).mean()) if len(g) else float("nan")
        if "scaffold_ratio_mean" in s and len(s):
            scaffolded = s.loc[s["scaffold_ratio_mean"] > 0, "rl_step"]
            row["last_scaffolded_step"] = int(scaffolded.max()) if len(scaffolded) else 0
        pos = shown[(shown["run"] == run.name) & (shown["polarity"] == "positive")].set_index("status")["met_rate"]
        row["met_rate_shown"] = float(pos.get("shown", np.nan))
        row["met_rate_hidden"] = float(pos.get("hidden", np.nan))
        row["shown_minus_hidden"] = row["met_rate_shown"] - row["met_rate_hidden"]
        p = points[points["run"] == run.name]
        row["length_reward_r"] = pearson(p["completion_tokens"].to_numpy(), p["reward"].to_numpy()) if len(p) else float("nan")
        rows.append(row)
    notes = missing(stats) + missing(groups) + missing(shown) + missing(points)
    return with_missing(pd.DataFrame(rows), notes)


def eval_summary(report: Any, best_of_n: pd.DataFrame | None = None, novelty: dict[str, Any] | None = None) -> dict[str, Any]:
    """The headline numbers of one evaluation for summary.json (sweeps flatten and collect it):
    score, std, 95% interval, sizes, per-axis scores, lengths, judge failures, Best-of-N by N
    and the novelty summary when given."""
    lo, hi = normal_interval(as_float(report.score), as_float(report.std), 1.96)
    out: dict[str, Any] = {
        "score": report.score, "std": report.std, "ci_low": lo, "ci_high": hi,
        "unclipped_score": getattr(report, "unclipped_score", float("nan")),
        "n_scored": report.n_scored, "n_examples": report.n_examples, "n_responses": report.n_responses,
        "axis": {r.tag.split(":", 1)[1]: r.score for r in report.axis_scores.itertuples()},
        "lengths": dict(report.lengths),
        "failed_frac": report.verdicts.get("failed_frac"),
        "judge_calls": report.judge.get("calls"),
    }
    if best_of_n is not None and len(best_of_n):
        out["best_of_n"] = {f"n{int(r.n)}": r.expected_best for r in best_of_n.itertuples()}
    if novelty:
        out.update({k: v for k, v in novelty.items() if k in ("novelty", "diversity")})
    return json_ready(out)


def analysis_summary(runs: Sequence[TrainingRun], evals: Sequence[EvalResult] = (), edge_frac: float = 0.1) -> dict[str, Any]:
    """summary.json of the analysis notebook: per-run headline numbers (`run_summary`), per-eval
    score and interval (`eval_table`), and what the runs did not log."""
    runs_table = run_summary(runs, edge_frac) if runs else pd.DataFrame(columns=["run"])
    evals_table = eval_table(evals)
    keep = ["score", "std", "ci_low", "ci_high", "unclipped_score", "train_zero_var_frac", "n_scored",
            "mean_tokens", "failed_frac", "novelty_median"]
    return json_ready({
        "n_runs": len(runs),
        "n_evals": len(evals),
        "runs": runs_table.set_index("run").to_dict("index"),
        "evals": evals_table.set_index("eval")[keep].to_dict("index") if len(evals_table) else {},
        "notes": [n for r in runs for n in r.notes],
    })
