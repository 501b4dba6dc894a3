"""Finding and loading training run folders for analysis (the notebook 05 tables start here).

A training run folder (see `train.run_folder`) holds two views of the same training: TRL's
logged metrics (`metrics.jsonl`, one line per optimizer update: KL, entropy, clip ratios, judge
accounting) and the per-rollout table (`rollouts/`, one row per sampled answer: scaffold ratio,
shown criteria, reward, length, per-criterion verdicts). Everything that can be computed
exactly from rollouts is computed from them; the metrics file fills in what only the trainer
knows (KL, entropy) and stands in for rollout numbers when a run did not log rollouts.
"""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd
import yaml

from ruscarl_lib.common.paths import resolve_path
from ruscarl_lib.data.rubric import Criterion, RubricExample
from ruscarl_lib.train.run_folder import (
    METRICS_FILE,
    PARAMS_FILE,
    ROLLOUTS_DIR,
    read_metrics,
    read_rollouts,
)

__all__ = [
    "TrainingRun",
    "find_run_dirs",
    "load_run",
    "load_runs",
    "run_overview",
]


#: Columns of the rollout table that may hold per-criterion verdicts, in order of preference:
#: `judge_verdicts` (RubricReward: one of Y/N/? per criterion) and `verdicts` (toy keyword
#: reward: a JSON list of booleans).
VERDICT_COLUMNS = ("judge_verdicts", "verdicts")


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


def is_run_dir(path: Path) -> bool:
    return (path / METRICS_FILE).is_file() or (path / ROLLOUTS_DIR).is_dir()


def expand_paths(patterns: str | Path | Iterable[str | Path], accept, what: str) -> list[Path]:
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
    return expand_paths(patterns, is_run_dir, f"a training run folder (no {METRICS_FILE}, no {ROLLOUTS_DIR}/)")


def short_labels(paths: Sequence[Path]) -> list[str]:
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
    from ruscarl_lib.data.read import load_dataset_from_params
    from ruscarl_lib.params import DataParams

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
    return [load_run(d, label, examples=examples, _cache=cache) for d, label in zip(dirs, short_labels(dirs))]


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
