"""Running a whole sweep: which runs are due, handing them to an executor (`sweeps.executors`:
local processes, optionally one GPU slice per run, or Ray tasks), the table and the report.

`python -m ruscarl_lib.sweeps.run SWEEP` (or `ruscarl sweep SWEEP`); a rerun skips finished runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from ruscarl_lib.common.paths import (
    project_root,
    resolve_path,
)
from ruscarl_lib.params import (
    load_params,
    save_params,
)
from ruscarl_lib.sweeps.executors import (
    LOGS_DIR,
    OUTCOME_PREFIX,
    ExecutorError,
    LocalExecutor,
    RayExecutor,
    ResourceSpec,
    RunTask,
    launch_command,
    make_executor,
)
from ruscarl_lib.sweeps.report import write_tables, collect_metrics, render_report
from ruscarl_lib.sweeps.spec import (
    SWEEPS_DIR,
    SweepRun,
    SweepSpec,
    locate,
    notebook_source,
    expand_runs,
    load_sweep,
)
from ruscarl_lib.sweeps.worker import (
    ATTEMPT_VAR,
    DONE_MARKER,
    RunOutcome,
    atomic_json,
    process_rank,
    run_worker,
)


__all__ = [
    "SweepResult",
    "main",
    "run_sweep",
]


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
    selected = _selected(spec, runs, only)
    resources = spec.resources.model_copy(update={
        k: v for k, v in {"gpus": gpus_per_run, "accelerate_config": accelerate_config}.items() if v is not None})
    executor, resources = _executor_for(executor, spec, resources, max_parallel, address)
    root = (resolve_path(out_root) if out_root is not None else resolve_path(SWEEPS_DIR)) / spec.name
    (root / ".locks").mkdir(parents=True, exist_ok=True)
    base_path = locate(spec.base, sweep_dir)
    if spec.prepare_sandbox:
        from ruscarl_lib.sandbox.prepare import prepare_sandbox

        files = prepare_sandbox(load_params(base_path), root / "sandbox")
        base_path = files.params_path
        if spec.sandbox_split == "validation":  # its own params file, so its run ids differ from held-out ones
            scored = files.params.model_copy(deep=True)
            scored.eval.data_path = str(files.validation_path)
            base_path = save_params(scored, root / "sandbox" / "sandbox_params_validation.yaml")
    sources = [notebook_source(n, sweep_dir) for n in spec.notebooks]
    missing = [str(s) for s in sources if not s.is_file()]
    if missing:
        raise FileNotFoundError(f"sweep {spec.name!r}: notebooks not found: {missing}")
    accelerate_file = locate(resources.accelerate_config, sweep_dir) if resources.accelerate_config else None
    if accelerate_file is not None and resources.gpus > 1 and not accelerate_file.is_file():
        raise FileNotFoundError(f"sweep {spec.name!r}: accelerate config not found: {accelerate_file}")
    varied_keys = list(runs[0].settings) if runs else []
    atomic_json(root / "sweep.json", {**spec.model_dump(), "base": str(base_path), "varied": varied_keys,
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
    metrics_path, _ = write_tables(root, metrics, _status_table(root, runs, outcomes))
    ordered = [outcomes[r.run_id] for r in selected]
    result = SweepResult(root=root, runs=runs, outcomes=ordered, metrics=metrics, metrics_path=metrics_path,
                         failed=[o.run_id for o in ordered if o.status in ("failed", "locked")])
    if report:
        _, result.report_path = render_report(root, title=f"Sweep {spec.name}", progress=progress,
                                              sweep_file=path, wall_s=time.perf_counter() - t_start)
    return result


def _selected(spec: SweepSpec, runs: list[SweepRun], only: Sequence[str] | None) -> list[SweepRun]:
    """The runs `only` names (all without it); an unknown run id is an error, not a no-op."""
    if not only:
        return runs
    unknown = sorted(set(only) - {r.run_id for r in runs})
    if unknown:
        raise KeyError(f"no such run ids in sweep {spec.name!r}: {unknown}")
    return [r for r in runs if r.run_id in set(only)]


def _executor_for(executor: str | LocalExecutor | RayExecutor, spec: SweepSpec, resources: ResourceSpec,
                  max_parallel: int | None, address: str | None) -> tuple[Any, ResourceSpec]:
    """The executor object and the per-run resources it will actually give (GPU slices checked
    before anything runs)."""
    if isinstance(executor, str):
        local_parallel = max_parallel or (None if resources.gpus else spec.max_parallel)
        executor = make_executor(executor, max_parallel=local_parallel, gpus_per_run=resources.gpus,
                                 address=address, resources=resources)
    elif isinstance(executor, RayExecutor):
        executor.resources = resources
    if isinstance(executor, LocalExecutor):
        resources = resources.model_copy(update={"gpus": executor.gpus_per_run})
        executor.slices()  # too few GPUs fails before anything runs
    return executor, resources


def _status_table(root: Path, runs: list[SweepRun], outcomes: dict[str, RunOutcome]) -> pd.DataFrame:
    """One row per run: what happened to it in this call (or whether an earlier one finished it)."""
    return pd.DataFrame([
        {"run_id": r.run_id, "status": outcomes[r.run_id].status if r.run_id in outcomes else
         ("done" if (root / r.run_id / DONE_MARKER).exists() else "not run"),
         "seconds": round(outcomes[r.run_id].seconds, 2) if r.run_id in outcomes else None,
         "error": outcomes[r.run_id].error if r.run_id in outcomes else "", **r.settings}
        for r in runs
    ])


def _announce(outcome: RunOutcome) -> RunOutcome:
    extra = f" ({outcome.seconds:.1f}s)" if outcome.status == "done" else (f": {outcome.error}" if outcome.error else "")
    print(f"[sweep] {outcome.run_id}: {outcome.status}{extra}", file=sys.stderr, flush=True)
    return outcome


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m ruscarl_lib.sweeps.run params/sweep_x.yaml [--dry-run] [--max-parallel N] ...`"""
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
        if process_rank()[0] == 0:
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
