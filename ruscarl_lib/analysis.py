"""Compare training runs and evaluations: the tables behind the analysis notebook (05).

A training run folder (see `run_outputs`) holds two views of the same training: TRL's logged
metrics (`metrics.jsonl`, one line per optimizer update: KL, entropy, clip ratios, judge
accounting) and the per-rollout table (`rollouts/`, one row per sampled answer: scaffold ratio,
shown criteria, reward, length, per-criterion verdicts). Everything that can be computed
exactly from rollouts is computed from them; the metrics file fills in what only the trainer
knows (KL, entropy) and stands in for rollout numbers when a run did not log rollouts.

What each view answers (METHOD.md sections 4 and 7):
- reward and scaffold-ratio curves: does reward keep rising once the scaffold has decayed?
- zero-variance groups against scaffold ratio: scaffolds exist to break all-equal groups,
  which carry no GRPO gradient;
- per-axis met rates over training, from per-criterion verdicts and the rubric's axis tags;
- length against reward: a reward that grows only with length is a reward-hacking smell;
- met rate of criteria shown in the scaffold against those hidden: how much the hint, rather
  than the policy, produced the reward;
- evaluation reports side by side with confidence intervals.

Runs differ in what they logged. Every table function returns a DataFrame whose
`attrs["missing"]` lists, in words, what could not be used and why; `missing(frame)` reads it
and plotting code skips a figure whose table is empty rather than failing.
"""

from __future__ import annotations

import glob
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

import numpy as np
import pandas as pd
import yaml

from .paths import resolve_path
from .rubric import Criterion, RubricExample
from .run_outputs import METRICS_FILE, PARAMS_FILE, ROLLOUTS_DIR, read_metrics, read_rollouts

log = logging.getLogger(__name__)

__all__ = [
    "EvalResult",
    "TrainingRun",
    "analysis_summary",
    "axis_met_rates",
    "criterion_table",
    "eval_best_of_n",
    "eval_summary",
    "eval_table",
    "eval_tag_table",
    "find_eval_dirs",
    "find_run_dirs",
    "group_table",
    "json_ready",
    "length_reward",
    "length_reward_points",
    "load_evals",
    "load_run",
    "load_runs",
    "missing",
    "parse_verdicts",
    "run_overview",
    "run_summary",
    "shown_vs_hidden",
    "step_stats",
    "training_curves",
    "wilson_interval",
    "zero_variance_by_ratio",
]

#: Columns of the rollout table that may hold per-criterion verdicts, in order of preference:
#: `judge_verdicts` (RubricReward: one of Y/N/? per criterion) and `verdicts` (toy keyword
#: reward: a JSON list of booleans).
VERDICT_COLUMNS = ("judge_verdicts", "verdicts")

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
STATUS_ORDER = ("shown", "hidden", "unscaffolded")


def missing(frame: pd.DataFrame) -> list[str]:
    """What a table could not include, in words (empty when nothing was missing)."""
    return list(frame.attrs.get("missing", []))


def _with_missing(frame: pd.DataFrame, notes: Iterable[str]) -> pd.DataFrame:
    frame.attrs["missing"] = list(dict.fromkeys(notes))
    return frame


# --------------------------------------------------------------------------------------------
# Loading runs
# --------------------------------------------------------------------------------------------


@dataclass
class TrainingRun:
    """One run folder read into memory. `rubrics` maps example id to its criteria when a rubric
    set matching the rollouts was found (needed for axes and polarity of criteria)."""

    name: str
    path: Path
    metrics: pd.DataFrame
    rollouts: pd.DataFrame
    params: dict[str, Any] | None
    rubrics: dict[str, list[Criterion]] | None = None
    notes: list[str] = field(default_factory=list)
    _criteria: pd.DataFrame | None = field(default=None, repr=False)

    @property
    def verdict_column(self) -> str | None:
        return next((c for c in VERDICT_COLUMNS if c in self.rollouts.columns), None)

    def has(self, *columns: str) -> bool:
        return all(c in self.rollouts.columns for c in columns)


def _is_run_dir(path: Path) -> bool:
    return (path / METRICS_FILE).is_file() or (path / ROLLOUTS_DIR).is_dir()


def _expand(patterns: str | Path | Iterable[str | Path], accept, what: str) -> list[Path]:
    """Folders named by paths or glob patterns (relative to the project root), in order.

    A glob keeps the folders that `accept`; a plain path must exist and be accepted, so a typo
    fails loudly instead of silently dropping a run from the comparison.
    """
    if isinstance(patterns, (str, Path)):
        patterns = [patterns]
    found: list[Path] = []
    for pattern in patterns:
        text = str(resolve_path(pattern))
        if glob.has_magic(text):
            found.extend(p for p in sorted(Path(x) for x in glob.glob(text)) if p.is_dir() and accept(p))
            continue
        path = Path(text)
        if not path.is_dir():
            raise FileNotFoundError(f"no such folder: {text}")
        if not accept(path):
            raise ValueError(f"{text} is not {what}")
        found.append(path)
    return list(dict.fromkeys(p.resolve() for p in found))


def find_run_dirs(patterns: str | Path | Iterable[str | Path]) -> list[Path]:
    """Run folders (holding metrics.jsonl or rollouts/) among paths and glob patterns."""
    return _expand(patterns, _is_run_dir, f"a training run folder (no {METRICS_FILE}, no {ROLLOUTS_DIR}/)")


def _labels(paths: Sequence[Path]) -> list[str]:
    """Folder names, lengthened with parent folders until they are unique."""
    depth = 1
    while depth < 6:
        labels = ["/".join(p.parts[-depth:]) for p in paths]
        if len(set(labels)) == len(labels):
            return labels
        depth += 1
    return [str(p) for p in paths]


def _rubrics_from_examples(examples: Iterable[RubricExample]) -> dict[str, list[Criterion]]:
    return {ex.id: list(ex.rubric) for ex in examples}


def _rubrics_from_params(params: dict[str, Any] | None, cache: dict[str, Any]) -> tuple[dict | None, str]:
    """The rubric set the run's params.yaml names, or None and why not."""
    if not params or "data" not in params:
        return None, "no params.yaml with a data section"
    from .data_io import load_dataset_from_params
    from .params import DataParams

    key = json.dumps(params["data"], sort_keys=True, default=str)
    if key not in cache:
        try:
            cache[key] = _rubrics_from_examples(load_dataset_from_params(DataParams.model_validate(params["data"])))
        except Exception as err:  # a moved or missing dataset must not stop the analysis
            cache[key] = f"its data section could not be loaded ({type(err).__name__}: {err})"
    found = cache[key]
    return (None, found) if isinstance(found, str) else (found, "")


def _check_rubrics(rubrics: dict[str, list[Criterion]], rollouts: pd.DataFrame) -> str:
    """Empty when every rollout's example is in `rubrics` with the right number of criteria."""
    if rollouts.empty or "example_id" not in rollouts:
        return "the rollouts name no examples"
    pairs = rollouts[["example_id", "n_criteria"]].drop_duplicates() if "n_criteria" in rollouts else \
        rollouts[["example_id"]].drop_duplicates().assign(n_criteria=-1)
    unknown = [e for e in pairs["example_id"] if str(e) not in rubrics]
    if unknown:
        return f"{len(unknown)} rollout examples are not in the rubric set (first: {unknown[0]})"
    wrong = [e for e, n in zip(pairs["example_id"], pairs["n_criteria"]) if n >= 0 and len(rubrics[str(e)]) != n]
    if wrong:
        return f"{len(wrong)} examples have another number of criteria in the rubric set (first: {wrong[0]})"
    return ""


def load_run(
    path: str | Path,
    name: str | None = None,
    *,
    examples: Sequence[RubricExample] | None = None,
    _cache: dict[str, Any] | None = None,
) -> TrainingRun:
    """Read a run folder. The rubric set comes from `examples`, else from the data section of
    the run's params.yaml; it is kept only if it matches the rollouts."""
    path = resolve_path(path)
    metrics = read_metrics(path, "train")
    rollouts = read_rollouts(path)
    params = yaml.safe_load((path / PARAMS_FILE).read_text()) if (path / PARAMS_FILE).is_file() else None
    run = TrainingRun(name or path.name, path, metrics, rollouts, params)
    if metrics.empty:
        run.notes.append(f"run {run.name}: no training lines in {METRICS_FILE}")
    if rollouts.empty:
        run.notes.append(f"run {run.name}: no rollout table (train.log_rollouts off?)")
    if run.verdict_column is None:
        if not rollouts.empty:
            run.notes.append(f"run {run.name}: rollouts hold no per-criterion verdicts "
                             f"(none of the columns {', '.join(VERDICT_COLUMNS)})")
        return run
    cache = _cache if _cache is not None else {}
    if examples is not None:
        rubrics, why = _rubrics_from_examples(examples), ""
        source = "the given rubric set"
    else:
        rubrics, why = _rubrics_from_params(params, cache)
        source = "the data section of its params.yaml"
    if rubrics is not None:
        why = _check_rubrics(rubrics, rollouts)
    if why:
        run.notes.append(f"run {run.name}: no rubric for criterion axes and polarity from {source}: {why}")
    else:
        run.rubrics = rubrics
    return run


def load_runs(
    patterns: str | Path | Iterable[str | Path],
    *,
    examples: Sequence[RubricExample] | None = None,
) -> list[TrainingRun]:
    """Every run folder among paths and glob patterns, named by their (unique) folder names."""
    dirs = find_run_dirs(patterns)
    cache: dict[str, Any] = {}
    return [load_run(d, label, examples=examples, _cache=cache) for d, label in zip(dirs, _labels(dirs))]


def run_overview(runs: Sequence[TrainingRun]) -> pd.DataFrame:
    """One line per run: what it holds, so a reader knows which plots can cover it."""
    rows = []
    for r in runs:
        steps = r.rollouts["rl_step"] if "rl_step" in r.rollouts else r.metrics.get("rl_step", pd.Series(dtype=float))
        scaffold = (r.params or {}).get("scaffold", {})
        rows.append({
            "run": r.name, "path": str(r.path), "rl_steps": int(pd.Series(steps).nunique()),
            "rollouts": len(r.rollouts), "metric_lines": len(r.metrics),
            "scaffold": scaffold.get("enabled") if scaffold else None,
            "verdicts": r.verdict_column, "rubric": r.rubrics is not None, "notes": "; ".join(r.notes),
        })
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# Per step and per group
# --------------------------------------------------------------------------------------------


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
    return _with_missing(out, notes)


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
    return _with_missing(out, notes)


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
    return _with_missing(out, notes)


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
        return _with_missing(pd.DataFrame(columns=columns), notes)
    edges, labels = _ratio_bins(bins)
    cut = pd.cut(groups[f"ratio_{by}"].clip(upper=1.0), edges, labels=labels)
    work = groups.assign(ratio_bin=cut, zv=groups["zero_variance"].astype(float))
    out = (work.groupby(["run", "ratio_bin"], observed=True, sort=True)
           .agg(n_groups=("zv", "size"), zero_var_frac=("zv", "mean")).reset_index())
    return _with_missing(out, notes)


# --------------------------------------------------------------------------------------------
# Per criterion
# --------------------------------------------------------------------------------------------


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
    return _with_missing(out, notes)


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
        return _with_missing(pd.DataFrame(columns=columns), notes)
    unknown = table.loc[table["polarity"] == "unknown", "run"].unique()
    notes.extend(f"run {r}: axes unknown (no rubric), left out of per-axis rates" for r in unknown)
    table = table[table["polarity"] != "unknown"]
    if polarity != "all":
        table = table[table["polarity"] == polarity]
    if rollouts == "unscaffolded":
        table = table[table["status"] == "unscaffolded"]
    table = table[table["met"].notna()]
    if table.empty:
        return _with_missing(pd.DataFrame(columns=columns), notes)
    parts = []
    for run_name, frame in table.groupby("run", sort=False):
        frame = frame.assign(step=_step_bins(frame["rl_step"], max_bins))
        parts.append(frame.groupby(["step", "axis"], sort=True)["met"].agg(met_rate="mean", n="size")
                     .reset_index().assign(run=run_name))
    return _with_missing(pd.concat(parts, ignore_index=True)[columns], notes)


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
        return _with_missing(pd.DataFrame(columns=columns), notes)
    out = (table.groupby(["run", "polarity", "status"], observed=True, sort=True)["met"]
           .agg(n="size", met="sum").reset_index())
    out["met_rate"] = out["met"] / out["n"]
    out["ci_low"], out["ci_high"] = wilson_interval(out["met"].to_numpy(), out["n"].to_numpy(), z)
    return _with_missing(out[columns], notes)


# --------------------------------------------------------------------------------------------
# Length against reward
# --------------------------------------------------------------------------------------------


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def _spearman(x: pd.Series, y: pd.Series) -> float:
    return _pearson(x.rank().to_numpy(), y.rank().to_numpy())


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
    return _with_missing(out, notes)


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
            "pearson_r": _pearson(g["completion_tokens"].to_numpy(), g["reward"].to_numpy()),
            "spearman_r": _spearman(g["completion_tokens"], g["reward"]),
        })
    columns = ["run", "phase", "first_step", "last_step", "n", "mean_tokens", "mean_reward", "pearson_r", "spearman_r"]
    return _with_missing(pd.DataFrame(rows, columns=columns), missing(points))


# --------------------------------------------------------------------------------------------
# Headline numbers per run
# --------------------------------------------------------------------------------------------


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
        row["length_reward_r"] = _pearson(p["completion_tokens"].to_numpy(), p["reward"].to_numpy()) if len(p) else float("nan")
        rows.append(row)
    notes = missing(stats) + missing(groups) + missing(shown) + missing(points)
    return _with_missing(pd.DataFrame(rows), notes)


# --------------------------------------------------------------------------------------------
# Evaluations
# --------------------------------------------------------------------------------------------


@dataclass
class EvalResult:
    """One evaluation folder written by `evaluation.run_evaluation` (report.json and friends)."""

    name: str
    path: Path
    report: dict[str, Any]
    scores: pd.DataFrame | None = None
    novelty: dict[str, Any] | None = None


def find_eval_dirs(patterns: str | Path | Iterable[str | Path]) -> list[Path]:
    """Evaluation folders (holding report.json) among paths and glob patterns."""
    from .evaluation import REPORT_FILE

    return _expand(patterns, lambda p: (p / REPORT_FILE).is_file(), f"an evaluation folder (no {REPORT_FILE})")


def load_evals(patterns: str | Path | Iterable[str | Path]) -> list[EvalResult]:
    """Every evaluation folder among paths and glob patterns, with scores and novelty when saved."""
    from .evaluation import REPORT_FILE

    dirs = find_eval_dirs(patterns) if patterns else []
    out = []
    for d, label in zip(dirs, _labels(dirs)):
        scores = pd.read_parquet(d / "scores.parquet") if (d / "scores.parquet").is_file() else None
        novelty = json.loads((d / "novelty.json").read_text()) if (d / "novelty.json").is_file() else None
        out.append(EvalResult(label, d, json.loads((d / REPORT_FILE).read_text()), scores, novelty))
    return out


def _num(x: Any) -> float:
    return float("nan") if x is None else float(x)


def _interval(score: float, std: float, z: float) -> tuple[float, float]:
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
    if not _is_run_dir(run_dir):
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
        score, std = _num(r.get("score")), _num(r.get("std"))
        extra = r.get("extra") or {}
        nov = (e.novelty or {}).get("novelty") or {}
        lo, hi = _interval(score, std, z)
        rows.append({
            "eval": e.name, "score": score, "std": std, "ci_low": lo, "ci_high": hi,
            "unclipped_score": _num(r.get("unclipped_score")),
            "train_zero_var_frac": train_zero_variance_frac(extra.get("adapter")),
            "n_scored": r.get("n_scored"), "n_examples": r.get("n_examples"), "n_responses": r.get("n_responses"),
            "mean_tokens": _num((r.get("lengths") or {}).get("mean_tokens")),
            "failed_frac": _num((r.get("verdicts") or {}).get("failed_frac")),
            "model": extra.get("model"), "adapter": extra.get("adapter"),
            "novelty_median": _num(nov.get("median_ratio")) if nov else float("nan"),
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
            score, std = _num(v.get("score")), _num(v.get("std"))
            lo, hi = _interval(score, std, z)
            rows.append({"eval": e.name, "tag": tag, "score": score, "std": std, "n": v.get("n"),
                         "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows, columns=["eval", "tag", "score", "std", "n", "ci_low", "ci_high"])


def eval_best_of_n(evals: Sequence[EvalResult]) -> pd.DataFrame:
    """Best-of-N curves (`best_of_n.best_of_n_curves`) of the evaluations that sampled several
    answers per prompt; the others are listed as missing."""
    from .best_of_n import best_of_n_curves

    frames, notes = {}, []
    for e in evals:
        if e.scores is None or e.scores.empty:
            notes.append(f"eval {e.name}: no scores.parquet")
        elif e.scores.groupby("example_id").size().max() < 2:
            notes.append(f"eval {e.name}: one answer per prompt, no Best-of-N")
        else:
            frames[e.name] = e.scores
    out = best_of_n_curves(frames) if frames else pd.DataFrame(columns=["model", "n", "expected_best", "sem", "n_prompts"])
    return _with_missing(out, notes)


def json_ready(x: Any) -> Any:
    """Plain JSON values: numpy scalars unwrapped, NaN and infinities as None, Paths as text."""
    if isinstance(x, dict):
        return {str(k): json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_ready(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def eval_summary(report: Any, best_of_n: pd.DataFrame | None = None, novelty: dict[str, Any] | None = None) -> dict[str, Any]:
    """The headline numbers of one evaluation for summary.json (sweeps flatten and collect it):
    score, std, 95% interval, sizes, per-axis scores, lengths, judge failures, Best-of-N by N
    and the novelty summary when given."""
    lo, hi = _interval(_num(report.score), _num(report.std), 1.96)
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
