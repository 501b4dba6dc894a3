"""What a sweep file asks for, and the runs it expands to.

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

`seeds: [0, 1, 2]` runs every point once per seed (`seed_key`, default the top-level `seed`).
Run ids are `<key=value slug>-<hash>`: readable, and stable because the hash covers only what
shapes the run (the parsed base params, the overrides, the notebook parameters and the
`process` settings).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ruscarl_lib.common.paths import (
    project_root,
    resolve_path,
)
from ruscarl_lib.params import (
    ParamsError,
    format_validation_error,
    params_from_dict,
    read_yaml_mapping,
    set_dotted,
)
from ruscarl_lib.sweeps.executors import (
    ProcessSpec,
    ResourceSpec,
)


NOTEBOOK_PREFIX = "notebook."


SWEEPS_DIR = "outputs/sweeps"


__all__ = [
    "SweepRun",
    "SweepSpec",
    "expand_runs",
    "load_sweep",
]


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
    sandbox_split: Literal["heldout", "validation"] = Field(
        "heldout", description="With prepare_sandbox: the split the runs evaluate on. A sweep that chooses "
                               "settings (a t0 / alpha grid) scores validation; held-out is reported once, after.",
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


def locate(value: str, sweep_dir: Path | None) -> Path:
    """Absolute paths as they are; relative ones from the project root, else the sweep file's folder."""
    p = Path(value).expanduser()
    if p.is_absolute():
        return p
    candidate = resolve_path(p)
    if not candidate.exists() and sweep_dir is not None and (sweep_dir / p).exists():
        return sweep_dir / p
    return candidate


def notebook_source(name: str, sweep_dir: Path | None) -> Path:
    """`03_train` means notebooks/03_train.ipynb; anything with a folder or suffix is a path."""
    p = Path(name)
    if len(p.parts) == 1 and p.suffix != ".ipynb":
        return project_root() / "notebooks" / f"{name}.ipynb"
    return locate(name, sweep_dir)


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
               process: dict[str, Any] | None = None, split: str | None = None) -> str:
    """`<slug>-<8 hex>`. The hash covers the base params with the overrides applied (as written,
    before schema defaults, so a library upgrade does not rename runs), the notebook parameters
    and the process settings (threads and kernels change results): two points that end up with
    the same settings are one run. Where a run executes (executor, GPUs) is not part of it.
    `split` (a sandbox sweep scored on validation) joins the hash only when given, so held-out
    sweeps keep their run ids."""
    shape: dict[str, Any] = {"params": effective_params, "notebook": notebook_parameters}
    if process is not None:
        shape["process"] = process
    if split is not None:
        shape["split"] = split
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
    base_path = locate(spec.base, sweep_dir)
    base_raw = read_yaml_mapping(base_path, f"base params file of sweep {spec.name!r}")
    points = _with_seeds(spec, _points(spec))
    process = spec.process.model_dump(mode="json")
    split = spec.sandbox_split if spec.prepare_sandbox and spec.sandbox_split != "heldout" else None
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
        run_id = run_id_for(raw, nb_params, point, process, split)
        digest = run_id.rsplit("-", 1)[1]
        point_id = ""
        if spec.seeds:
            unseeded = copy.deepcopy(base_raw)
            for key, value in overrides.items():
                if key != spec.seed_key:
                    set_dotted(unseeded, key, value)
            point_id = run_id_for(unseeded, nb_params, {k: v for k, v in point.items() if k != spec.seed_key},
                                  process, split)
        if digest in seen:  # same settings as an earlier point, whatever it was called
            continue
        seen.add(digest)
        settings = {k: nb_params.get(k[len(NOTEBOOK_PREFIX):]) if k.startswith(NOTEBOOK_PREFIX)
                    else _dotted_get(effective, k) for k in varied_keys}
        runs.append(SweepRun(run_id=run_id, varied=dict(point), settings=settings, overrides=overrides,
                             notebook_parameters=nb_params, point_id=point_id))
    return runs
