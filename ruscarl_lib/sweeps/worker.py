"""Executing one sweep run, as its own worker process (`--worker RUN_ID`).

Each run lives in `outputs/sweeps/<name>/<run_id>/`: its effective `params.yaml` (with
`output.dir`/`output.run_name` pointing at that folder, so a training notebook writes its run
there), one executed notebook per stage, each stage's own output folder, the collected
`metrics.json`, and a `DONE` marker written last. A run without the marker (failed, killed,
half-written) has its folder cleared and is run again. Every file goes through a temporary
name, so nothing half-written ever looks complete.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ruscarl_lib.common.paths import (
    atomic_write_text,
)
from ruscarl_lib.params import (
    load_params,
    save_params,
)
from ruscarl_lib.sweeps.spec import (
    SweepRun,
    SweepSpec,
    notebook_source,
    expand_runs,
    load_sweep,
)

log = logging.getLogger(__name__)


DONE_MARKER = "DONE"
RUN_FILE = "run.json"
RUN_METRICS = "metrics.json"


__all__ = [
]


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


def atomic_json(path: Path, payload: Any) -> Path:
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


def process_rank() -> tuple[int, int]:
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

    rank, world = process_rank()
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
        atomic_json(run_dir / RUN_FILE, {
            "run_id": run.run_id, "sweep": spec.name, "varied": run.varied, "overrides": run.overrides,
            "notebook_parameters": run.notebook_parameters, "notebooks": spec.notebooks,
            "process_env": {k: os.environ.get(k) for k in env},
            "devices": {k: os.environ.get(k) for k in PROCESS_ENV_RECORDED},
            "host": socket.gethostname(), "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        })
        if world > 1:
            atomic_write_text(run_dir / READY_FILE, os.environ.get(ATTEMPT_VAR, ""))
        from ruscarl_lib.notebook.reports import run_notebook

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
        atomic_json(run_dir / RUN_METRICS, {"run_id": run.run_id, "seconds": seconds,
                                             "missing_metrics": missing, "metrics": metrics})
        atomic_write_text(run_dir / DONE_MARKER, time.strftime("%Y-%m-%dT%H:%M:%S\n"))
        return RunOutcome(run.run_id, "done", seconds)
    finally:
        lock.release()


def _run_other_rank(spec: SweepSpec, run: SweepRun, root: Path, sources: list[Path], progress: bool,
                    rank: int, wait_s: float = 600.0) -> RunOutcome:
    """A rank > 0 of a multi-process run: wait for rank 0's setup of this attempt, then execute
    the same notebooks with the same parameters into `<stage>.rank<k>.ipynb`."""
    from ruscarl_lib.notebook.reports import run_notebook

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
    sources = [notebook_source(n, sweep_dir) for n in spec.notebooks]
    return _run_one(spec, runs[run_id], root, Path(info["base"]), sources, progress)
