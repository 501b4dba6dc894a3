"""Per-criterion views of a run: per-axis met rates over training, from the per-criterion
verdicts and the rubric's axis tags, and the met rate of criteria shown in the scaffold against
those hidden (how much the hint, rather than the policy, produced the reward).
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal, Sequence

import numpy as np
import pandas as pd

from ruscarl_lib.analysis.notes import with_missing, missing
from ruscarl_lib.analysis.runs import TrainingRun

__all__ = [
    "axis_met_rates",
    "criterion_table",
    "parse_verdicts",
    "shown_vs_hidden",
    "wilson_interval",
]


STATUS_ORDER = ("shown", "hidden", "unscaffolded")


def parse_verdicts(value: Any) -> list[float]:
    """One cell of a verdict column as 1.0 (met), 0.0 (not met) or NaN (failed / unknown)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            value = json.loads(text)
        else:  # RubricReward's compact form: Y, N or ? per criterion
            return [1.0 if ch == "Y" else 0.0 if ch == "N" else np.nan for ch in text]
    if hasattr(value, "tolist"):
        value = value.tolist()
    return [np.nan if v is None else float(bool(v)) for v in value]


def _shown_set(value: Any) -> set[int]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return set()
    if isinstance(value, str):
        value = json.loads(value)
    return {int(i) for i in value}


def criterion_table(runs: Sequence[TrainingRun]) -> pd.DataFrame:
    """One row per (rollout, criterion) with its verdict, whether the scaffold showed it, and,
    when the run's rubric is known, its points, polarity and axis.

    `status`: `shown` (in this rollout's scaffold), `hidden` (a scaffolded rollout that did not
    show it) or `unscaffolded` (the rollout had no scaffold). `met` is 1/0, NaN when the judge
    failed.
    """
    parts, notes = [], []
    for run in runs:
        col = run.verdict_column
        if col is None or not run.has("rl_step"):
            notes.append(f"run {run.name}: no per-criterion verdicts in its rollouts")
            continue
        notes.extend(n for n in run.notes if "rubric" in n)
        if "shown" not in run.rollouts:
            notes.append(f"run {run.name}: no `shown` column, so shown/hidden is unknown")
        if run._criteria is None:  # the expansion is the slow part; do it once per run
            run._criteria = _expand_criteria(run, col)
        parts.append(run._criteria)
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["run", "rl_step", "example_id", "rollout", "criterion_index", "met", "status", "points",
                 "polarity", "axis"])
    return with_missing(out, notes)


def _expand_criteria(run: TrainingRun, col: str) -> pd.DataFrame:
    """The (rollout, criterion) rows of one run (see `criterion_table`)."""
    df = run.rollouts
    verdicts = [parse_verdicts(v) for v in df[col]]
    lengths = np.array([len(v) for v in verdicts])
    shown = [_shown_set(s) for s in df["shown"]] if "shown" in df else [set()] * len(df)
    crit = np.concatenate([np.arange(n) for n in lengths]) if len(lengths) else np.array([], int)
    rep = np.repeat(np.arange(len(df)), lengths)
    scaffolded = np.array([bool(s) for s in shown])[rep] if len(rep) else np.array([], bool)
    is_shown = np.array([c in shown[r] for r, c in zip(rep, crit)], dtype=bool)
    status = np.where(is_shown, "shown", np.where(scaffolded, "hidden", "unscaffolded"))
    if "shown" not in df:
        status[:] = "unknown"
    table = pd.DataFrame({
        "run": run.name,
        "rl_step": df["rl_step"].to_numpy()[rep],
        "example_id": df["example_id"].astype(str).to_numpy()[rep] if "example_id" in df else None,
        "rollout": rep,
        "criterion_index": crit,
        "met": np.array([x for v in verdicts for x in v], dtype=float),
        "status": pd.Categorical(status, categories=[*STATUS_ORDER, "unknown"]),
    })
    if run.rubrics is not None:
        rubric = run.rubrics
        crits = [rubric[e][i] if i < len(rubric[e]) else None for e, i in zip(table["example_id"], crit)]
        table["points"] = [np.nan if c is None else c.points for c in crits]
        table["polarity"] = np.select([table["points"] > 0, table["points"] <= 0], ["positive", "negative"], "unknown")
        table["axis"] = ["(unknown)" if c is None else c.tag_value("axis") or "(none)" for c in crits]
    else:
        table["points"] = np.nan
        table["polarity"] = "unknown"
        table["axis"] = "(unknown)"
    return table


def _step_bins(steps: pd.Series, max_bins: int) -> pd.Series:
    """Each step mapped to the first step of its bin (bins of equal width, at most `max_bins`)."""
    lo, hi = int(steps.min()), int(steps.max())
    width = max(1, math.ceil((hi - lo + 1) / max_bins))
    return lo + (steps.astype(int) - lo) // width * width


def axis_met_rates(
    runs: Sequence[TrainingRun],
    *,
    polarity: Literal["positive", "negative", "all"] = "positive",
    rollouts: Literal["all", "unscaffolded"] = "all",
    max_bins: int = 25,
) -> pd.DataFrame:
    """Met rate of each rubric axis over training: (run, step, axis) -> met_rate, n.

    `step` is the first RL step of a bin of steps (at most `max_bins` bins per run). Positive
    criteria by default: a met negative criterion is a violation, not progress. `rollouts=
    "unscaffolded"` keeps only rollouts without a scaffold, which shows what the policy does
    unaided.
    """
    table = criterion_table(runs)
    notes = missing(table)
    columns = ["run", "step", "axis", "met_rate", "n"]
    if table.empty:
        return with_missing(pd.DataFrame(columns=columns), notes)
    unknown = table.loc[table["polarity"] == "unknown", "run"].unique()
    notes.extend(f"run {r}: axes unknown (no rubric), left out of per-axis rates" for r in unknown)
    table = table[table["polarity"] != "unknown"]
    if polarity != "all":
        table = table[table["polarity"] == polarity]
    if rollouts == "unscaffolded":
        table = table[table["status"] == "unscaffolded"]
    table = table[table["met"].notna()]
    if table.empty:
        return with_missing(pd.DataFrame(columns=columns), notes)
    parts = []
    for run_name, frame in table.groupby("run", sort=False):
        frame = frame.assign(step=_step_bins(frame["rl_step"], max_bins))
        parts.append(frame.groupby(["step", "axis"], sort=True)["met"].agg(met_rate="mean", n="size")
                     .reset_index().assign(run=run_name))
    return with_missing(pd.concat(parts, ignore_index=True)[columns], notes)


def wilson_interval(successes: np.ndarray | float, n: np.ndarray | float, z: float = 1.96) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a binomial proportion (sane at 0, 1 and small n)."""
    k, n = np.asarray(successes, dtype=float), np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        denom = 1 + z**2 / n
        centre = (p + z**2 / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    return np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)


def shown_vs_hidden(runs: Sequence[TrainingRun], z: float = 1.96) -> pd.DataFrame:
    """Met rate of criteria by scaffold status (shown / hidden / unscaffolded) and polarity,
    with Wilson intervals. A large shown-minus-hidden gap late in training means the reward
    still comes from the hints rather than from the policy."""
    table = criterion_table(runs)
    notes = missing(table)
    table = table[table["met"].notna() & (table["status"] != "unknown")] if len(table) else table
    columns = ["run", "polarity", "status", "n", "met", "met_rate", "ci_low", "ci_high"]
    if table.empty:
        return with_missing(pd.DataFrame(columns=columns), notes)
    out = (table.groupby(["run", "polarity", "status"], observed=True, sort=True)["met"]
           .agg(n="size", met="sum").reset_index())
    out["met_rate"] = out["met"] / out["n"]
    out["ci_low"], out["ci_high"] = wilson_interval(out["met"].to_numpy(), out["n"].to_numpy(), z)
    return with_missing(out[columns], notes)
