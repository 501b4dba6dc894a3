"""Parameter sweeps: one sweep file, many notebook runs, one table and one report.

A sweep file (YAML, usually under `params/`) names a base params file, the notebooks to run,
and the points to run them at: a `grid` (dotted key -> list of values, crossed) and/or explicit
`points` (override dicts). Keys starting with `notebook.` are passed to the notebooks as
papermill parameters instead of going into the params file. Example:

    name: scaffold_ablation
    base: params/cpu_sandbox.yaml
    notebooks: [03_train, 04_evaluate]
    overrides: {train.max_steps: 100}          # every run
    grid: {scaffold.alpha: [50, 125], scaffold.t0: [0.1, 0.2]}
    points:
      - {scaffold.enabled: false}
      - {scaffold.intra_group: binary}
    max_parallel: 2

Each run lives in `outputs/sweeps/<name>/<run_id>/`: its effective `params.yaml` (with
`output.dir`/`output.run_name` pointing at that folder, so a training notebook writes its run
there), one executed notebook per stage, each stage's own output folder, the collected
`metrics.json`, and a `DONE` marker written last. A rerun skips runs with the marker; a run
without it (failed, killed, half-written) has its folder cleared and is run again. Every file
the sweep writes goes through a temporary name, so nothing half-written ever looks complete.
Run ids are `<key=value slug>-<hash>`: readable, and stable because the hash covers only what
shapes the run (the parsed base params, the overrides, the notebook parameters and the
`process` settings).

`seeds: [0, 1, 2]` runs every point once per seed (`seed_key`, default the top-level `seed`);
the report then shows each point's mean and 95% interval over seeds (`sweep_stats.py`). Each run
executes as its own worker process (`--worker RUN_ID`), started by an executor from
`sweep_executors.py`: local processes (optionally one GPU slice per run) or Ray tasks; the
`process` section (threads, environment) and `resources` (GPUs, CPUs, memory) are per run.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import itertools
import json
import logging
import math
import os
import re
import shutil
import socket
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .params import (
    ParamsError,
    format_validation_error,
    load_params,
    params_from_dict,
    read_yaml_mapping,
    save_params,
    set_dotted,
)
from .paths import atomic_write_parquet, atomic_write_text, project_root, resolve_path
from .sweep_executors import (
    LOGS_DIR,
    OUTCOME_PREFIX,
    ExecutorError,
    LocalExecutor,
    ProcessSpec,
    RayExecutor,
    ResourceSpec,
    RunTask,
    launch_command,
    make_executor,
)

log = logging.getLogger(__name__)

NOTEBOOK_PREFIX = "notebook."
DONE_MARKER = "DONE"
RUN_FILE = "run.json"
RUN_METRICS = "metrics.json"
SWEEPS_DIR = "outputs/sweeps"

__all__ = [
    "SweepRun",
    "SweepSpec",
    "SweepResult",
    "collect_metrics",
    "expand_runs",
    "load_sweep",
    "main",
    "run_sweep",
    "summary_figure",
]


# --------------------------------------------------------------------------------------------
# Sweep file
# --------------------------------------------------------------------------------------------


class SweepSpec(BaseModel):
    """A validated sweep file. Unknown keys are errors, as in params files."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., description="Folder name under outputs/sweeps/.")
    description: str = ""
    base: str = Field("params/default.yaml", description="Base params file every run starts from.")
    notebooks: list[str] = Field(..., min_length=1, description="Notebooks run in order for every point.")
    overrides: dict[str, Any] = Field(default_factory=dict, description="Dotted overrides for every run.")
    parameters: dict[str, Any] = Field(
        default_factory=dict,
        description="Papermill parameters for every run; in string values {run_id}, {run_dir} and {root} "
                    "are replaced by the run's id and folders (e.g. the adapter an earlier notebook trained).",
    )
    prepare_sandbox: bool = Field(
        False, description="Prepare the CPU sandbox of `base` once (world splits, cached warm start) and "
                           "start every run from the prepared params instead of `base` itself.",
    )
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="Crossed: every combination is a run.")
    points: list[dict[str, Any]] = Field(default_factory=list, description="Explicit runs (override dicts).")
    combine: Literal["union", "product"] = Field(
        "union", description="union: grid runs plus point runs; product: every point at every grid cell."
    )
    metrics_file: str = Field("summary.json", description="JSON file each notebook writes in its output_dir.")
    report_metrics: list[str] = Field(
        default_factory=list, description="Metrics plotted in the report; empty: every numeric one."
    )
    seeds: list[int] = Field(
        default_factory=list, description="Every point is run once per seed (the key `seed_key`); the "
                                          "summary then reports each point's mean and 95% interval over seeds.")
    seed_key: str = Field("seed", description="Dotted params key the seed axis sets.")
    process: ProcessSpec = Field(default_factory=ProcessSpec,
                                 description="Thread counts and environment of every run, under every executor.")
    resources: ResourceSpec = Field(default_factory=ResourceSpec, description="What one run needs (GPUs, CPUs, memory).")
    max_parallel: int = Field(1, ge=1, description="Runs executed at the same time (local executor, no GPUs).")
    timeout_s: int | None = Field(None, ge=1, description="Per-cell execution timeout.")
    keep_partial: bool = Field(
        False, description="Do not clear an unfinished run's folder (for notebooks that resume themselves)."
    )

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", v):
            raise ValueError("name may hold letters, digits, '_', '.' and '-' only")
        return v

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"seeds repeat: {v}")
        return v

    @field_validator("grid")
    @classmethod
    def _non_empty_lists(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        empty = [k for k, vals in v.items() if not vals]
        if empty:
            raise ValueError(f"grid keys without values: {empty}")
        return v


def load_sweep(path: str | Path) -> tuple[SweepSpec, Path]:
    """The sweep file and the folder it sits in (relative paths may be taken from there)."""
    path = resolve_path(path)
    raw = read_yaml_mapping(path, "sweep file")
    try:
        return SweepSpec.model_validate(raw), path.parent
    except ValidationError as err:
        raise ParamsError(format_validation_error(err, str(path), "sweep file")) from None


def _locate(value: str, sweep_dir: Path | None) -> Path:
    """Absolute paths as they are; relative ones from the project root, else the sweep file's folder."""
    p = Path(value).expanduser()
    if p.is_absolute():
        return p
    candidate = resolve_path(p)
    if not candidate.exists() and sweep_dir is not None and (sweep_dir / p).exists():
        return sweep_dir / p
    return candidate


def _notebook_source(name: str, sweep_dir: Path | None) -> Path:
    """`03_train` means notebooks/03_train.ipynb; anything with a folder or suffix is a path."""
    p = Path(name)
    if len(p.parts) == 1 and p.suffix != ".ipynb":
        return project_root() / "notebooks" / f"{name}.ipynb"
    return _locate(name, sweep_dir)


# --------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepRun:
    """One point of the sweep.

    `varied` is what the point itself sets; `settings` holds the effective value of every key
    varied anywhere in the sweep (so table columns are complete even where a point left a key
    at its base value); `overrides` and `notebook_parameters` are what the run is executed with.
    """

    run_id: str
    varied: dict[str, Any]
    settings: dict[str, Any]
    overrides: dict[str, Any]
    notebook_parameters: dict[str, Any]
    point_id: str = ""  # with a seed axis: the run id the point would have without its seed


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))


def _format_value(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (int, str)):
        return str(v)
    return hashlib.sha256(_canonical(v).encode()).hexdigest()[:6]


def _slug(varied: dict[str, Any], max_len: int = 60) -> str:
    leaves = [k.rsplit(".", 1)[-1] for k in varied]
    parts = []
    for key, leaf in zip(varied, leaves):
        label = leaf if leaves.count(leaf) == 1 else key
        parts.append(f"{label}={_format_value(varied[key])}")
    text = re.sub(r"[^A-Za-z0-9._=+-]+", "-", "_".join(parts)).strip("-_")
    return text[:max_len].rstrip("-_") or "base"


def run_id_for(effective_params: dict[str, Any], notebook_parameters: dict[str, Any], varied: dict[str, Any],
               process: dict[str, Any] | None = None) -> str:
    """`<slug>-<8 hex>`. The hash covers the base params with the overrides applied (as written,
    before schema defaults, so a library upgrade does not rename runs), the notebook parameters
    and the process settings (threads and kernels change results): two points that end up with
    the same settings are one run. Where a run executes (executor, GPUs) is not part of it."""
    shape: dict[str, Any] = {"params": effective_params, "notebook": notebook_parameters}
    if process is not None:
        shape["process"] = process
    digest = hashlib.sha256(_canonical(shape).encode()).hexdigest()[:8]
    return f"{_slug(varied)}-{digest}"


def _dotted_get(tree: dict[str, Any], key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _points(spec: SweepSpec) -> list[dict[str, Any]]:
    keys = list(spec.grid)
    grid = [dict(zip(keys, combo)) for combo in itertools.product(*(spec.grid[k] for k in keys))] if keys else []
    if spec.combine == "product":
        cells = grid or [{}]
        explicit = spec.points or [{}]
        return [{**p, **g} for p in explicit for g in cells]
    out = (grid + [dict(p) for p in spec.points]) or [{}]
    return out


def _with_seeds(spec: SweepSpec, points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not spec.seeds:
        return points
    clash = [p for p in points if spec.seed_key in p]
    if clash:
        raise ParamsError(f"sweep {spec.name!r}: points set {spec.seed_key!r} and the sweep has a seed axis: {clash}")
    return [{**p, spec.seed_key: s} for p in points for s in spec.seeds]


def expand_runs(spec: SweepSpec, sweep_dir: Path | None = None) -> list[SweepRun]:
    """Every run of the sweep, in file order, duplicates removed; each run's params validated now,
    so a typo fails before anything runs."""
    base_path = _locate(spec.base, sweep_dir)
    base_raw = read_yaml_mapping(base_path, f"base params file of sweep {spec.name!r}")
    points = _with_seeds(spec, _points(spec))
    process = spec.process.model_dump(mode="json")
    varied_keys = list(dict.fromkeys(k for p in points for k in p))
    runs: list[SweepRun] = []
    seen: set[str] = set()
    for point in points:
        merged = {**spec.overrides, **point}
        overrides = {k: v for k, v in merged.items() if not k.startswith(NOTEBOOK_PREFIX)}
        nb_params = {**spec.parameters,
                     **{k[len(NOTEBOOK_PREFIX):]: v for k, v in merged.items() if k.startswith(NOTEBOOK_PREFIX)}}
        raw = copy.deepcopy(base_raw)
        for key, value in overrides.items():
            set_dotted(raw, key, value)
        effective = params_from_dict(copy.deepcopy(raw), source=f"{base_path} + {overrides}").model_dump(mode="json")
        run_id = run_id_for(raw, nb_params, point, process)
        digest = run_id.rsplit("-", 1)[1]
        point_id = ""
        if spec.seeds:
            unseeded = copy.deepcopy(base_raw)
            for key, value in overrides.items():
                if key != spec.seed_key:
                    set_dotted(unseeded, key, value)
            point_id = run_id_for(unseeded, nb_params, {k: v for k, v in point.items() if k != spec.seed_key}, process)
        if digest in seen:  # same settings as an earlier point, whatever it was called
            continue
        seen.add(digest)
        settings = {k: nb_params.get(k[len(NOTEBOOK_PREFIX):]) if k.startswith(NOTEBOOK_PREFIX)
                    else _dotted_get(effective, k) for k in varied_keys}
        runs.append(SweepRun(run_id=run_id, varied=dict(point), settings=settings, overrides=overrides,
                             notebook_parameters=nb_params, point_id=point_id))
    return runs


# --------------------------------------------------------------------------------------------
# Executing one run
# --------------------------------------------------------------------------------------------


@dataclass
class RunOutcome:
    run_id: str
    status: Literal["done", "skipped", "failed", "locked"]
    seconds: float = 0.0
    error: str = ""


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> dotted keys; only scalars are kept (lists and tables belong in files)."""
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return {prefix[:-1] or "value": obj}
    return {}


def _stage_name(notebook: str) -> str:
    return Path(notebook).stem


def _atomic_json(path: Path, payload: Any) -> Path:
    return atomic_write_text(path, json.dumps(payload, indent=2, default=str, allow_nan=True))


def _filled(parameters: dict[str, Any], run_id: str, run_dir: Path, root: Path) -> dict[str, Any]:
    """Notebook parameters with {run_id}, {run_dir} and {root} replaced in string values."""
    fill = {"{run_id}": run_id, "{run_dir}": str(run_dir), "{root}": str(root)}
    out = {}
    for key, value in parameters.items():
        if isinstance(value, str):
            for token, text in fill.items():
                value = value.replace(token, text)
        out[key] = value
    return out


READY_FILE = ".ready"
ATTEMPT_VAR = "RUSCARL_SWEEP_ATTEMPT"
PROCESS_ENV_RECORDED = ("CUDA_VISIBLE_DEVICES", "WORLD_SIZE")


def _rank() -> tuple[int, int]:
    """(rank, world size) under `accelerate launch`; (0, 1) for a plain worker."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _run_one(spec: SweepSpec, run: SweepRun, root: Path, base_path: Path, sources: list[Path],
             progress: bool) -> RunOutcome:
    """Execute every notebook of one run; DONE is written only after metrics.json.

    Under `accelerate launch` every rank executes the notebooks (the training inside them is
    the distributed part); rank 0 alone clears the folder, writes params, metrics and DONE, and
    the other ranks start once rank 0 has marked this attempt ready.
    """
    from filelock import FileLock, Timeout

    rank, world = _rank()
    if rank > 0:
        return _run_other_rank(spec, run, root, sources, progress, rank)
    run_dir = root / run.run_id
    lock = FileLock(str(root / ".locks" / f"{run.run_id}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return RunOutcome(run.run_id, "locked", error="another sweep process holds this run")
    try:
        if (run_dir / DONE_MARKER).exists():
            return RunOutcome(run.run_id, "skipped")
        if run_dir.exists() and not spec.keep_partial:
            log.info("run %s was not finished: clearing %s", run.run_id, run_dir)
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        overrides = {**run.overrides, "output.dir": str(root), "output.run_name": run.run_id}
        params = load_params(base_path, overrides)
        params_file = save_params(params, run_dir / "params.yaml")
        env = spec.process.environment()
        _atomic_json(run_dir / RUN_FILE, {
            "run_id": run.run_id, "sweep": spec.name, "varied": run.varied, "overrides": run.overrides,
            "notebook_parameters": run.notebook_parameters, "notebooks": spec.notebooks,
            "process_env": {k: os.environ.get(k) for k in env},
            "devices": {k: os.environ.get(k) for k in PROCESS_ENV_RECORDED},
            "host": socket.gethostname(), "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        })
        if world > 1:
            atomic_write_text(run_dir / READY_FILE, os.environ.get(ATTEMPT_VAR, ""))
        from .reports import run_notebook

        metrics: dict[str, Any] = {}
        missing: list[str] = []
        try:
            for name, source in zip(spec.notebooks, sources):
                stage = _stage_name(name)
                stage_dir = run_dir / stage
                parameters = {"params_file": str(params_file), "output_dir": str(stage_dir),
                              **_filled(run.notebook_parameters, run.run_id, run_dir, root)}
                run_notebook(source, run_dir / f"{stage}.ipynb", parameters, progress=progress,
                             timeout_s=spec.timeout_s)
                found = stage_dir / spec.metrics_file
                if not found.exists():  # a training notebook writes into <output_dir>/<run_name>/
                    found = stage_dir / run.run_id / spec.metrics_file
                if not found.exists():
                    missing.append(stage)
                    continue
                values = _flatten(json.loads(found.read_text()))
                prefix = f"{stage}." if len(spec.notebooks) > 1 else ""
                metrics.update({prefix + k: v for k, v in values.items()})
        except Exception as err:  # a failed run is recorded and redone next time
            atomic_write_text(run_dir / "ERROR.txt", traceback.format_exc())
            return RunOutcome(run.run_id, "failed", time.perf_counter() - t0, f"{type(err).__name__}: {err}"[:500])
        seconds = time.perf_counter() - t0
        _atomic_json(run_dir / RUN_METRICS, {"run_id": run.run_id, "seconds": seconds,
                                             "missing_metrics": missing, "metrics": metrics})
        atomic_write_text(run_dir / DONE_MARKER, time.strftime("%Y-%m-%dT%H:%M:%S\n"))
        return RunOutcome(run.run_id, "done", seconds)
    finally:
        lock.release()


def _run_other_rank(spec: SweepSpec, run: SweepRun, root: Path, sources: list[Path], progress: bool,
                    rank: int, wait_s: float = 600.0) -> RunOutcome:
    """A rank > 0 of a multi-process run: wait for rank 0's setup of this attempt, then execute
    the same notebooks with the same parameters into `<stage>.rank<k>.ipynb`."""
    from .reports import run_notebook

    run_dir = root / run.run_id
    attempt = os.environ.get(ATTEMPT_VAR, "")
    deadline = time.monotonic() + wait_s
    ready = run_dir / READY_FILE
    while not (ready.exists() and ready.read_text() == attempt):
        if (run_dir / DONE_MARKER).exists():
            return RunOutcome(run.run_id, "skipped")
        if time.monotonic() > deadline:
            return RunOutcome(run.run_id, "failed", error=f"rank {rank}: rank 0 never set up {run_dir}")
        time.sleep(0.2)
    t0 = time.perf_counter()
    params_file = run_dir / "params.yaml"
    for name, source in zip(spec.notebooks, sources):
        stage = _stage_name(name)
        parameters = {"params_file": str(params_file), "output_dir": str(run_dir / stage),
                      **_filled(run.notebook_parameters, run.run_id, run_dir, root)}
        run_notebook(source, run_dir / f"{stage}.rank{rank}.ipynb", parameters, progress=progress,
                     timeout_s=spec.timeout_s)
    return RunOutcome(run.run_id, "done", time.perf_counter() - t0)


def run_worker(sweep_file: str | Path, root: str | Path, run_id: str, *, progress: bool = False) -> RunOutcome:
    """One run, in the process an executor started for it (`--worker RUN_ID --root ROOT`).

    The base params come from the sweep.json the driver wrote (so a prepared sandbox is not
    prepared again on every worker)."""
    spec, sweep_dir = load_sweep(sweep_file)
    root = Path(root)
    runs = {r.run_id: r for r in expand_runs(spec, sweep_dir)}
    if run_id not in runs:
        raise KeyError(f"no run {run_id!r} in sweep {spec.name!r} (was the sweep file changed?)")
    info = json.loads((root / "sweep.json").read_text())
    sources = [_notebook_source(n, sweep_dir) for n in spec.notebooks]
    return _run_one(spec, runs[run_id], root, Path(info["base"]), sources, progress)


# --------------------------------------------------------------------------------------------
# Collecting and reporting
# --------------------------------------------------------------------------------------------


def collect_metrics(root: str | Path, runs: Sequence[SweepRun]) -> pd.DataFrame:
    """One row per finished run: run_id, the varied settings, run seconds, then its metrics.

    Only runs with the DONE marker count; their metrics.json was complete before it was written.
    """
    root = Path(root)
    rows = []
    for run in runs:
        run_dir = root / run.run_id
        if not (run_dir / DONE_MARKER).exists():
            continue
        saved = json.loads((run_dir / RUN_METRICS).read_text())
        point = {"point": run.point_id} if run.point_id else {}
        rows.append({"run_id": run.run_id, **point, **run.settings, "seconds": saved["seconds"], **saved["metrics"]})
    return pd.DataFrame(rows)


def _parquet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """Columns mixing types (a metric that is a number in one run, text in another) become text."""
    out = frame.copy()
    for col in out.columns:
        if out[col].dtype == object:
            kinds = {type(v) for v in out[col] if v is not None and not (isinstance(v, float) and math.isnan(v))}
            if len(kinds) > 1 or (kinds and not kinds <= {str, bool}):
                out[col] = out[col].map(lambda v: None if v is None else str(v))
    return out


def _write_tables(root: Path, metrics: pd.DataFrame, outcomes: pd.DataFrame) -> tuple[Path, Path]:
    parquet = atomic_write_parquet(root / "metrics.parquet", _parquet_safe(metrics))
    csv = atomic_write_text(root / "metrics.csv", metrics.to_csv(index=False))
    atomic_write_text(root / "runs.csv", outcomes.to_csv(index=False))
    return parquet, csv


def summary_figure(metrics: pd.DataFrame, varied: Sequence[str], metric_cols: Sequence[str] | None = None,
                   *, by_run: bool = False, max_panels: int = 6, ignore: Sequence[str] = ()):
    """One panel per numeric metric (at most `max_panels`); None when there is nothing to plot.

    A grid sweep plots each metric against its first varied key (hue: the second). A sweep of
    explicit points (`by_run`), or one that varies nothing, gets one bar per run instead, since
    its points do not share an axis; runs of one point at several seeds (a `point` column) share
    a bar, with seaborn's interval of the mean.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    skip = {"run_id", "point", "seconds", *varied, *ignore}
    if metric_cols is None:
        metric_cols = [c for c in metrics.columns if c not in skip and pd.api.types.is_numeric_dtype(metrics[c])
                       and not pd.api.types.is_bool_dtype(metrics[c])]
    metric_cols = [c for c in metric_cols if c in metrics.columns][:max_panels]
    if not metric_cols or metrics.empty:
        return None
    n = len(metric_cols)
    cols = min(3, n)
    data = metrics.copy()
    varied = [v for v in varied if v in data.columns]
    if by_run or not varied:
        height = max(3.0, 0.35 * (data["point"].nunique() if "point" in data else len(data)) + 1.2)
        fig, axes = plt.subplots(math.ceil(n / cols), cols, figsize=(5.2 * cols, height * math.ceil(n / cols)),
                                 squeeze=False)
        for ax, col in zip(axes.ravel(), metric_cols):
            sns.barplot(data=data, y="point" if "point" in data else "run_id", x=col, ax=ax, color="tab:blue")
            ax.set(title=col, xlabel="", ylabel="")
    else:
        fig, axes = plt.subplots(math.ceil(n / cols), cols, figsize=(5.2 * cols, 3.8 * math.ceil(n / cols)),
                                 squeeze=False)
        x, hue = varied[0], (varied[1] if len(varied) > 1 else None)
        data[x] = data[x].astype(str)
        if hue:
            data[hue] = data[hue].astype(str)
        for ax, col in zip(axes.ravel(), metric_cols):
            sns.pointplot(data=data, x=x, y=col, hue=hue, ax=ax, dodge=0.2 if hue else False)
            ax.set_title(col)
            ax.tick_params(axis="x", rotation=30)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


_SUMMARY_CELLS = [
    ("code", "sweep_dir = ''", ["parameters"]),
    ("code", """import json
from pathlib import Path
import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Markdown, display
from ruscarl_lib.sweeps import summary_figure

root = Path(sweep_dir)
info = json.loads((root / 'sweep.json').read_text())
metrics = pd.read_parquet(root / 'metrics.parquet')
runs = pd.read_csv(root / 'runs.csv').fillna({'error': ''})
display(Markdown(f"# Sweep `{info['name']}`\\n\\n{info['description']}\\n\\n"
                 f"Base params: `{info['base']}`; notebooks: {', '.join(info['notebooks'])}; "
                 f"{len(metrics)} of {len(runs)} runs finished."))""", []),
    ("markdown", "## Runs\nStatus of every run of this invocation (`skipped`: finished earlier).", []),
    ("code", "runs", []),
    ("markdown", "## Metrics\nOne row per finished run: the settings it varied, then what its notebooks reported.", []),
    ("code", "metrics", []),
    ("markdown", "## Over seeds\nWith a seed axis: each point's mean and 95% Student-t interval over its seeds, "
                 "and the orderings of points whose intervals do not overlap (beyond seed noise).", []),
    ("code", """from ruscarl_lib.paths import atomic_write_text
from ruscarl_lib.sweep_stats import orderings_beyond_noise, seed_summary

if info.get('seeds') and not metrics.empty:
    point_keys = [k for k in info['varied'] if k != info['seed_key']]
    numeric = [c for c in metrics.columns if c not in {'run_id', 'point', 'seconds', *info['varied']}
               and pd.api.types.is_numeric_dtype(metrics[c]) and not pd.api.types.is_bool_dtype(metrics[c])]
    for metric in (info['report_metrics'] or numeric[:6]):
        table = seed_summary(metrics, metric, point_keys, seed_key=info['seed_key'])
        atomic_write_text(root / f"seeds_{metric.replace('/', '_')}.csv", table.to_csv(index=False))
        display(Markdown(f"### `{metric}`: mean and 95% t-interval over seeds {info['seeds']}"))
        display(table)
        beyond = orderings_beyond_noise(table)
        display(Markdown(f"{len(beyond)} of {len(table) * (len(table) - 1) // 2} orderings beyond noise "
                         "(intervals not overlapping):"))
        display(beyond)
else:
    display(Markdown("One seed per point: no intervals; add `seeds: [...]` to the sweep file."))""", []),
    ("code", """# over seeds: one mark per point (mean and its interval), not one per run
varied = [v for v in info['varied'] if not (info.get('seeds') and v == info.get('seed_key'))]
fig = summary_figure(metrics, varied, info['report_metrics'] or None, by_run=info['by_run'],
                     ignore=[info['seed_key']] if info.get('seeds') else [])
if fig is not None:
    fig.savefig(root / 'summary.png', dpi=110, bbox_inches='tight')
    plt.show()""", []),
]


def _summary_notebook(path: Path) -> Path:
    import nbformat

    nb = nbformat.v4.new_notebook()
    for kind, source, tags in _SUMMARY_CELLS:
        cell = nbformat.v4.new_code_cell(source) if kind == "code" else nbformat.v4.new_markdown_cell(source)
        if tags:
            cell.metadata["tags"] = tags
        nb.cells.append(cell)
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                   "language_info": {"name": "python"}}
    return atomic_write_text(path, nbformat.writes(nb))


def render_report(root: Path, title: str, progress: bool = False, *, sweep_file: str | Path | None = None,
                  wall_s: float | None = None) -> tuple[Path, Path]:
    """Execute the summary notebook on the collected tables and export it as report.html.

    The page opens with what was run (sweep file, base params, versions, machine, wall time),
    the metrics table and the summary figure; then the summary notebook.
    """
    from .reports import export_html, relative_to_root, run_notebook, summary_html

    source = _summary_notebook(root / ".summary_source.ipynb")
    executed = run_notebook(source, root / "summary.ipynb", {"sweep_dir": str(root)}, progress=progress)
    info = json.loads((root / "sweep.json").read_text())
    metrics = pd.read_parquet(root / "metrics.parquet")
    shown = headline_metrics(metrics, info.get("varied", []), info.get("report_metrics") or None)
    what = {"sweep": info.get("name"), "file": relative_to_root(sweep_file) if sweep_file else "",
            "base params": relative_to_root(info.get("base")),
            "runs finished": f"{len(metrics)} of {len(info.get('run_ids', []))}",
            "wall time": f"{wall_s:.0f}s" if wall_s is not None else ""}
    summary = summary_html(what, shown, figures=[(root / "summary.png", f"{title}: metrics per run")],
                           note=info.get("description") or "")
    html = export_html([executed], root / "report.html", title=title, summary=summary)
    return executed, html


def headline_metrics(metrics: pd.DataFrame, varied: Sequence[str], metric_cols: Sequence[str] | None = None,
                     max_metrics: int = 6) -> pd.DataFrame:
    """The sweep's headline table: one row per run, its varied settings, then a few metrics
    (the sweep file's `report_metrics`, else the first numeric ones), numbers to 3 decimals."""
    if metrics.empty:
        return pd.DataFrame({"run_id": []}).set_index("run_id")
    skip = {"run_id", "seconds", *varied}
    if metric_cols is None:
        metric_cols = [c for c in metrics.columns if c not in skip and pd.api.types.is_numeric_dtype(metrics[c])
                       and not pd.api.types.is_bool_dtype(metrics[c])]
    cols = [c for c in varied if c in metrics.columns] + [c for c in metric_cols if c in metrics.columns][:max_metrics]
    table = metrics.set_index("run_id")[cols].copy()
    for c in table.columns:
        if pd.api.types.is_float_dtype(table[c]):
            table[c] = table[c].map(lambda v: "–" if pd.isna(v) else f"{v:.3f}")
    return table


# --------------------------------------------------------------------------------------------
# The sweep
# --------------------------------------------------------------------------------------------


@dataclass
class SweepResult:
    root: Path
    runs: list[SweepRun]
    outcomes: list[RunOutcome]
    metrics: pd.DataFrame
    metrics_path: Path | None = None
    report_path: Path | None = None
    failed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


def run_sweep(
    path: str | Path,
    *,
    out_root: str | Path | None = None,
    max_parallel: int | None = None,
    only: Sequence[str] | None = None,
    report: bool = True,
    progress: bool = False,
    executor: str | LocalExecutor | RayExecutor = "local",
    address: str | None = None,
    gpus_per_run: int | None = None,
    accelerate_config: str | Path | None = None,
) -> SweepResult:
    """Run every unfinished point of the sweep file `path`, then collect and report.

    `out_root` replaces `outputs/sweeps` (the sweep lands in `<out_root>/<name>/`); `only`
    restricts the runs to these run ids. Failed runs do not stop the others; they are listed in
    the result and redone on the next call. `executor` is "local" (processes here; with
    `gpus_per_run` one GPU slice each), "ray" (tasks on the Ray cluster at `address`) or an
    executor object; `gpus_per_run` and `accelerate_config` replace the sweep file's resources.
    """
    t_start = time.perf_counter()
    path = resolve_path(path)
    spec, sweep_dir = load_sweep(path)
    runs = expand_runs(spec, sweep_dir)
    if only:
        unknown = sorted(set(only) - {r.run_id for r in runs})
        if unknown:
            raise KeyError(f"no such run ids in sweep {spec.name!r}: {unknown}")
        selected = [r for r in runs if r.run_id in set(only)]
    else:
        selected = runs
    resources = spec.resources.model_copy(update={
        k: v for k, v in {"gpus": gpus_per_run, "accelerate_config": accelerate_config}.items() if v is not None})
    if isinstance(executor, str):
        local_parallel = max_parallel or (None if resources.gpus else spec.max_parallel)
        executor = make_executor(executor, max_parallel=local_parallel, gpus_per_run=resources.gpus,
                                 address=address, resources=resources)
    elif isinstance(executor, RayExecutor):
        executor.resources = resources
    if isinstance(executor, LocalExecutor):
        resources = resources.model_copy(update={"gpus": executor.gpus_per_run})
        executor.slices()  # too few GPUs fails before anything runs
    root = (resolve_path(out_root) if out_root is not None else resolve_path(SWEEPS_DIR)) / spec.name
    (root / ".locks").mkdir(parents=True, exist_ok=True)
    base_path = _locate(spec.base, sweep_dir)
    if spec.prepare_sandbox:
        from .sandbox.prepare import prepare_sandbox

        base_path = prepare_sandbox(load_params(base_path), root / "sandbox").params_path
    sources = [_notebook_source(n, sweep_dir) for n in spec.notebooks]
    missing = [str(s) for s in sources if not s.is_file()]
    if missing:
        raise FileNotFoundError(f"sweep {spec.name!r}: notebooks not found: {missing}")
    accelerate_file = _locate(resources.accelerate_config, sweep_dir) if resources.accelerate_config else None
    if accelerate_file is not None and resources.gpus > 1 and not accelerate_file.is_file():
        raise FileNotFoundError(f"sweep {spec.name!r}: accelerate config not found: {accelerate_file}")
    varied_keys = list(runs[0].settings) if runs else []
    _atomic_json(root / "sweep.json", {**spec.model_dump(), "base": str(base_path), "varied": varied_keys,
                                       "by_run": bool(spec.points),
                                       "run_ids": [r.run_id for r in runs]})

    outcomes: dict[str, RunOutcome] = {}
    due = []
    for r in selected:  # finished runs are not dispatched at all
        if (root / r.run_id / DONE_MARKER).exists():
            outcomes[r.run_id] = _announce(RunOutcome(r.run_id, "skipped"))
        else:
            due.append(r)
    attempt = uuid.uuid4().hex
    tasks = [RunTask(
        run_id=r.run_id,
        command=launch_command([str(path), "--worker", r.run_id, "--root", str(root), *(["--progress"] if progress else [])],
                               processes=resources.gpus, accelerate_config=accelerate_file,
                               launcher=getattr(executor, "launcher", None)),
        env={**spec.process.environment(), ATTEMPT_VAR: f"{attempt}-{r.run_id}"},
        cwd=str(project_root()), log_path=str(root / LOGS_DIR / f"{r.run_id}.log"), gpus=resources.gpus,
    ) for r in due]
    for got in executor.run(tasks, on_outcome=lambda o: _announce(RunOutcome(**o))):
        outcomes[got["run_id"]] = RunOutcome(**got)

    metrics = collect_metrics(root, runs)
    by_id = outcomes
    status = pd.DataFrame([
        {"run_id": r.run_id, "status": by_id[r.run_id].status if r.run_id in by_id else
         ("done" if (root / r.run_id / DONE_MARKER).exists() else "not run"),
         "seconds": round(by_id[r.run_id].seconds, 2) if r.run_id in by_id else None,
         "error": by_id[r.run_id].error if r.run_id in by_id else "", **r.settings}
        for r in runs
    ])
    metrics_path, _ = _write_tables(root, metrics, status)
    ordered = [outcomes[r.run_id] for r in selected]
    result = SweepResult(root=root, runs=runs, outcomes=ordered, metrics=metrics, metrics_path=metrics_path,
                         failed=[o.run_id for o in ordered if o.status in ("failed", "locked")])
    if report:
        _, result.report_path = render_report(root, title=f"Sweep {spec.name}", progress=progress,
                                              sweep_file=path, wall_s=time.perf_counter() - t_start)
    return result


def _announce(outcome: RunOutcome) -> RunOutcome:
    extra = f" ({outcome.seconds:.1f}s)" if outcome.status == "done" else (f": {outcome.error}" if outcome.error else "")
    print(f"[sweep] {outcome.run_id}: {outcome.status}{extra}", file=sys.stderr, flush=True)
    return outcome


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m ruscarl_lib.sweeps params/sweep_x.yaml [--dry-run] [--max-parallel N] ...`"""
    parser = argparse.ArgumentParser(prog="ruscarl sweep", description="Run a parameter sweep of notebooks.")
    parser.add_argument("sweep_file")
    parser.add_argument("--out", help="folder replacing outputs/sweeps")
    parser.add_argument("--max-parallel", type=int, help="override the sweep file's max_parallel")
    parser.add_argument("--only", action="append", metavar="RUN_ID", help="run only these run ids")
    parser.add_argument("--no-report", action="store_true", help="skip the summary notebook and HTML")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and whether they are done")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="one terminal line per running notebook: cell, training step, judge calls")
    parser.add_argument("--executor", choices=["local", "ray"], default="local",
                        help="local: processes on this machine; ray: one Ray task per run")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--gpus-per-run", type=int, metavar="N",
                        help="GPUs per run (default: the sweep file's resources.gpus); locally each run "
                             "gets its own N of the visible GPUs")
    parser.add_argument("--accelerate-config", metavar="FILE",
                        help="accelerate config for runs with several GPUs (default: resources.accelerate_config)")
    parser.add_argument("--worker", metavar="RUN_ID", help=argparse.SUPPRESS)  # one run, started by an executor
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        if not args.root:
            parser.error("--worker needs --root")
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        outcome = run_worker(args.sweep_file, args.root, args.worker, progress=args.progress)
        if _rank()[0] == 0:
            print(OUTCOME_PREFIX + json.dumps(outcome.__dict__), flush=True)
        return 0 if outcome.status in ("done", "skipped") else 1
    if args.dry_run:
        spec, sweep_dir = load_sweep(args.sweep_file)
        root = (resolve_path(args.out) if args.out else resolve_path(SWEEPS_DIR)) / spec.name
        for run in expand_runs(spec, sweep_dir):
            done = (root / run.run_id / DONE_MARKER).exists()
            print(f"{'done ' if done else 'todo '} {run.run_id}  {json.dumps(run.varied, default=str)}")
        return 0
    try:
        result = run_sweep(args.sweep_file, out_root=args.out, max_parallel=args.max_parallel, only=args.only,
                           report=not args.no_report, progress=args.progress, executor=args.executor,
                           address=args.address, gpus_per_run=args.gpus_per_run,
                           accelerate_config=args.accelerate_config)
    except ExecutorError as err:
        print(f"ruscarl sweep: {err}", file=sys.stderr)
        return 2
    print(f"metrics: {result.metrics_path}")
    if result.report_path:
        print(f"report: {result.report_path}")
    if result.failed:
        print(f"failed runs (rerun to retry): {', '.join(result.failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
