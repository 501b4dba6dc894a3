"""How a run moved over training (METHOD.md sections 4 and 7): per-step and per-group tables,
reward and scaffold-ratio curves (does reward keep rising once the scaffold has decayed?),
zero-variance groups against scaffold ratio (scaffolds exist to break all-equal groups, which
carry no GRPO gradient), and length against reward (a reward that grows only with length is a
reward-hacking smell).
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import numpy as np
import pandas as pd

from ruscarl_lib.analysis.notes import with_missing, missing
from ruscarl_lib.analysis.runs import TrainingRun

__all__ = [
    "group_table",
    "length_reward",
    "length_reward_points",
    "step_stats",
    "training_curves",
    "zero_variance_by_ratio",
]


#: metrics.jsonl key -> name in the step table. The first four also come from rollouts.
METRIC_NAMES = {
    "reward": "reward_mean",
    "scaffold/ratio_mean": "scaffold_ratio_mean",
    "frac_reward_zero_std": "zero_var_frac",
    "completions/mean_length": "completion_tokens_mean",
    "scaffold/criteria_shown_mean": "criteria_shown_mean",
    "scaffold/frac_scaffolded": "frac_scaffolded",
    "kl": "kl",
    "entropy": "entropy",
    "loss": "loss",
    "grad_norm": "grad_norm",
    "completions/clipped_ratio": "clipped_ratio",
    "judge/failed_frac": "judge_failed_frac",
}

DEFAULT_CURVES = ("reward_mean", "scaffold_ratio_mean", "zero_var_frac", "completion_tokens_mean")
STABILITY_CURVES = ("kl", "entropy", "grad_norm", "clipped_ratio")


def _valid_rewards(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["reward"].notna()]


def _group_keys(run: TrainingRun) -> list[str]:
    return ["rl_step", "group"] if "group" in run.rollouts else ["rl_step", "example_id"]


def group_table(runs: Sequence[TrainingRun], atol: float = 1e-8) -> pd.DataFrame:
    """One row per GRPO group (run, RL step, group): its scaffold ratios and reward spread.

    `zero_variance` is True when all valid rewards of the group are equal (no advantage, no
    gradient: TRL's `frac_reward_zero_std`); NaN for groups with fewer than two valid rewards.
    """
    parts, notes = [], []
    for run in runs:
        df = run.rollouts
        if df.empty or not run.has("rl_step", "reward"):
            notes.append(f"run {run.name}: no rollout rewards, so no group statistics")
            continue
        if "group" not in df:
            notes.append(f"run {run.name}: no group column; groups taken as (step, example)")
        keys = _group_keys(run)
        ratio = df["scaffold_ratio"] if "scaffold_ratio" in df else pd.Series(np.nan, index=df.index)
        if "scaffold_ratio" not in df:
            notes.append(f"run {run.name}: no scaffold_ratio column")
        work = df[keys].assign(ratio=ratio, reward=df["reward"])
        g = work.groupby(keys, sort=True)
        table = pd.DataFrame({
            "n": g.size(),
            "n_valid": g["reward"].count(),
            "ratio_mean": g["ratio"].mean(),
            "ratio_max": g["ratio"].max(),
            "reward_mean": g["reward"].mean(),
            "reward_std": g["reward"].std(ddof=1),
        }).reset_index()
        if "example_id" in df and "example_id" not in keys:
            table["example_id"] = df.groupby(keys, sort=True)["example_id"].first().to_numpy()
        zero = np.isclose(table["reward_std"].fillna(np.inf), 0.0, atol=atol)
        table["zero_variance"] = pd.array(np.where(table["n_valid"] >= 2, zero, pd.NA), dtype="boolean")
        table.insert(0, "run", run.name)
        parts.append(table)
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["run", "rl_step", "group", "n", "n_valid", "ratio_mean", "ratio_max", "reward_mean",
                 "reward_std", "zero_variance"])
    return with_missing(out, notes)


def _rollout_steps(run: TrainingRun) -> pd.DataFrame:
    """Exact per-step numbers from the rollout table."""
    df = run.rollouts
    g = df.groupby("rl_step", sort=True)
    out = pd.DataFrame({"n_rollouts": g.size(), "reward_mean": g["reward"].mean(),
                        "reward_std": g["reward"].std(ddof=1)})
    if "scaffold_ratio" in df:
        out["scaffold_ratio_mean"] = g["scaffold_ratio"].mean()
    if "n_shown" in df:
        out["criteria_shown_mean"] = g["n_shown"].mean()
        out["frac_scaffolded"] = g["n_shown"].apply(lambda s: float((s > 0).mean()))
    if "completion_tokens" in df:
        out["completion_tokens_mean"] = g["completion_tokens"].mean()
    groups = group_table([run])
    if len(groups):
        zg = groups.groupby("rl_step")["zero_variance"]
        out["zero_var_frac"] = zg.apply(lambda s: float(s.dropna().astype(float).mean()) if s.notna().any() else np.nan)
        out["n_groups"] = zg.size()
    return out


def _metric_steps(run: TrainingRun) -> pd.DataFrame:
    """Per-step means of the trainer's logged metrics, renamed (several updates per step are averaged)."""
    m = run.metrics
    key = "rl_step" if "rl_step" in m else "step"
    present = {k: v for k, v in METRIC_NAMES.items() if k in m}
    if m.empty or not present:
        return pd.DataFrame()
    values = m[[key, *present]].apply(pd.to_numeric, errors="coerce").rename(columns=present)
    out = values.groupby(key, sort=True).mean()
    out.index = out.index.astype(int)
    out.index.name = "rl_step"
    return out


def step_stats(runs: Sequence[TrainingRun]) -> pd.DataFrame:
    """One row per (run, RL step): rollout-exact numbers, then the trainer's metrics where the
    rollouts say nothing (KL, entropy, or everything when rollouts were not logged)."""
    parts, notes = [], []
    for run in runs:
        exact = _rollout_steps(run) if run.has("rl_step", "reward") else pd.DataFrame()
        logged = _metric_steps(run)
        if exact.empty and logged.empty:
            notes.append(f"run {run.name}: neither rollouts nor metrics to draw curves from")
            continue
        if exact.empty:
            notes.append(f"run {run.name}: curves from logged metrics only (no rollout table)")
            table = logged
        else:
            table = exact.combine_first(logged) if not logged.empty else exact
        table = table.reset_index().rename(columns={"index": "rl_step"})
        table.insert(0, "run", run.name)
        parts.append(table)
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["run", "rl_step"])
    return with_missing(out, notes)


def training_curves(
    runs: Sequence[TrainingRun], metrics: Sequence[str] = DEFAULT_CURVES, smooth: int = 1
) -> pd.DataFrame:
    """Long table (run, rl_step, metric, value) for line plots; `smooth` > 1 applies a centred
    rolling mean over that many steps within each run."""
    stats = step_stats(runs)
    notes = missing(stats)
    rows = []
    for run_name, frame in stats.groupby("run", sort=False):
        frame = frame.sort_values("rl_step")
        for metric in metrics:
            if metric not in frame or frame[metric].isna().all():
                notes.append(f"run {run_name}: no {metric}")
                continue
            values = frame[metric].astype(float)
            if smooth > 1:
                values = values.rolling(smooth, center=True, min_periods=1).mean()
            rows.append(pd.DataFrame({"run": run_name, "rl_step": frame["rl_step"].to_numpy(),
                                      "metric": metric, "value": values.to_numpy()}))
    out = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["run", "rl_step", "metric", "value"])
    return with_missing(out, notes)


def _ratio_bins(bins: int) -> tuple[np.ndarray, list[str]]:
    """Edges and labels: "0" (exactly unscaffolded), then `bins` equal bins up to 1."""
    inner = np.linspace(0, 1, bins + 1)
    edges = np.concatenate([[-np.inf], inner])
    labels = ["0"] + [f"({a:.2g}, {b:.2g}]" for a, b in zip(inner[:-1], inner[1:])]
    return edges, labels


def zero_variance_by_ratio(runs: Sequence[TrainingRun], bins: int = 4, by: Literal["mean", "max"] = "mean") -> pd.DataFrame:
    """Fraction of zero-variance groups per bin of the group's scaffold ratio (mean or max over
    its samples); bin "0" holds the unscaffolded groups exactly."""
    groups = group_table(runs)
    notes = missing(groups)
    groups = groups[groups["zero_variance"].notna()] if len(groups) else groups
    columns = ["run", "ratio_bin", "n_groups", "zero_var_frac"]
    if groups.empty:
        return with_missing(pd.DataFrame(columns=columns), notes)
    edges, labels = _ratio_bins(bins)
    cut = pd.cut(groups[f"ratio_{by}"].clip(upper=1.0), edges, labels=labels)
    work = groups.assign(ratio_bin=cut, zv=groups["zero_variance"].astype(float))
    out = (work.groupby(["run", "ratio_bin"], observed=True, sort=True)
           .agg(n_groups=("zv", "size"), zero_var_frac=("zv", "mean")).reset_index())
    return with_missing(out, notes)


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def _spearman(x: pd.Series, y: pd.Series) -> float:
    return pearson(x.rank().to_numpy(), y.rank().to_numpy())


def length_reward_points(runs: Sequence[TrainingRun], n_phases: int = 3) -> pd.DataFrame:
    """Per rollout: completion length, reward and training phase (equal thirds of the run's
    steps by default), for the reward-hacking scatter."""
    parts, notes = [], []
    for run in runs:
        if not run.has("rl_step", "reward", "completion_tokens"):
            notes.append(f"run {run.name}: no rollout lengths and rewards")
            continue
        df = _valid_rewards(run.rollouts)
        lo, hi = int(df["rl_step"].min()), int(df["rl_step"].max())
        edges = np.linspace(lo, hi + 1, n_phases + 1)
        phase = np.clip(np.searchsorted(edges, df["rl_step"].to_numpy(), side="right") - 1, 0, n_phases - 1)
        names = [f"steps {math.ceil(a)}-{math.ceil(b) - 1}" for a, b in zip(edges[:-1], edges[1:])]
        parts.append(pd.DataFrame({
            "run": run.name, "rl_step": df["rl_step"].to_numpy(), "phase": [names[p] for p in phase],
            "phase_index": phase, "completion_tokens": df["completion_tokens"].to_numpy(dtype=float),
            "reward": df["reward"].to_numpy(dtype=float),
        }))
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["run", "rl_step", "phase", "phase_index", "completion_tokens", "reward"])
    return with_missing(out, notes)


def length_reward(runs: Sequence[TrainingRun], n_phases: int = 3) -> pd.DataFrame:
    """Per run and phase: mean length, mean reward, and their Pearson and Spearman correlation
    over rollouts. Rising length with a rising length-reward correlation is the warning sign."""
    points = length_reward_points(runs, n_phases)
    rows = []
    for (run_name, idx, phase), g in points.groupby(["run", "phase_index", "phase"], sort=True):
        rows.append({
            "run": run_name, "phase": phase, "first_step": int(g["rl_step"].min()),
            "last_step": int(g["rl_step"].max()), "n": len(g),
            "mean_tokens": float(g["completion_tokens"].mean()), "mean_reward": float(g["reward"].mean()),
            "pearson_r": pearson(g["completion_tokens"].to_numpy(), g["reward"].to_numpy()),
            "spearman_r": _spearman(g["completion_tokens"], g["reward"]),
        })
    columns = ["run", "phase", "first_step", "last_step", "n", "mean_tokens", "mean_reward", "pearson_r", "spearman_r"]
    return with_missing(pd.DataFrame(rows, columns=columns), missing(points))
