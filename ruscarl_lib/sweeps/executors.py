"""Where sweep runs execute: processes on this machine, or Ray tasks on a cluster.

The sweep logic (`sweeps/`) decides which runs are due and what finished means (DONE markers,
clearing interrupted runs, the tables and the report). An executor only starts each due run as
one worker process, `python -m ruscarl_lib.sweeps.run SWEEP --worker RUN_ID --root ROOT`, and hands
back the outcome the worker prints. Both executors build that process the same way:

- the environment gets the sweep file's `process` settings (thread counts, kernel selection and
  any other variable that changes results), so a run computes the same thing wherever it runs;
  the executor's own environment (Ray sets OMP_NUM_THREADS=1 in its workers, a shell may set
  anything) never leaks into a result;
- a run with several GPUs and an accelerate config is started through `accelerate launch`, one
  worker per process; the worker of rank 0 does the run's bookkeeping.

The local executor hands each run its own slice of the visible GPUs (`CUDA_VISIBLE_DEVICES`) and
queues runs while no slice is free; the Ray executor asks Ray for the GPUs, CPUs and memory of
the sweep file's `resources` and lets Ray place the task (Ray sets CUDA_VISIBLE_DEVICES there).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ruscarl_lib.common.loopback import free_loopback_port

OUTCOME_PREFIX = "RUSCARL_SWEEP_OUTCOME "
PORT_TOKEN = "{port}"
PYTHON_TOKEN = "{python}"  # the interpreter of the machine that starts the run (a Ray node's own)
LOGS_DIR = ".logs"

# Every thread-pool size a CPU run may consult. torch takes its intra-op thread count from
# OMP_NUM_THREADS at import; MKL and OpenBLAS read their own.
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS")

__all__ = [
    "ExecutorError",
    "LocalExecutor",
    "ProcessSpec",
    "RayExecutor",
    "ResourceSpec",
    "RunTask",
    "launch_command",
    "make_executor",
    "visible_gpus",
]


class ExecutorError(RuntimeError):
    """An executor cannot run this sweep as asked (no Ray, too few GPUs, ...)."""


class ProcessSpec(BaseModel):
    """Process settings that change results; identical for a run under every executor."""

    model_config = ConfigDict(extra="forbid")

    threads: int = Field(1, ge=1, description="Thread count of every math library (OMP/MKL/OpenBLAS/torch). "
                                              "One by default: several runs share a machine, and results "
                                              "depend on the thread count.")
    env: dict[str, str] = Field(default_factory=dict, description="More variables, e.g. ATEN_CPU_CAPABILITY: avx2, "
                                                                  "MKL_ENABLE_INSTRUCTIONS: AVX2; these win over `threads`.")

    @field_validator("env", mode="before")
    @classmethod
    def _as_strings(cls, v: Any) -> Any:
        if isinstance(v, dict):
            bad = [k for k in v if not isinstance(k, str) or not k or "=" in k]
            if bad:
                raise ValueError(f"not environment variable names: {bad}")
            return {k: ("" if x is None else str(x).lower() if isinstance(x, bool) else str(x)) for k, x in v.items()}
        return v

    def environment(self) -> dict[str, str]:
        out = {name: str(self.threads) for name in THREAD_VARS}
        out["TOKENIZERS_PARALLELISM"] = "false"  # HF tokenizers spawn their own pool otherwise
        out.update(self.env)
        return out


class ResourceSpec(BaseModel):
    """What one run needs: Ray reserves it per task; the local executor uses `gpus`."""

    model_config = ConfigDict(extra="forbid")

    gpus: int = Field(0, ge=0, description="GPUs per run (a slice of CUDA_VISIBLE_DEVICES locally).")
    cpus: float = Field(1.0, gt=0, description="CPUs Ray reserves per run.")
    memory_gb: float | None = Field(None, gt=0, description="Memory Ray reserves per run.")
    accelerate_config: str | None = Field(
        None, description="accelerate config file; a run with gpus > 1 is then started with "
                          "`accelerate launch --num_processes <gpus>` (one process per GPU).")


@dataclass(frozen=True)
class RunTask:
    """One run as a process: its command (may hold {port}), the environment it adds, its log."""

    run_id: str
    command: list[str]
    env: dict[str, str]
    cwd: str
    log_path: str
    gpus: int = 0


def launch_command(worker_args: Sequence[str], *, processes: int = 1, accelerate_config: str | Path | None = None,
                   launcher: Sequence[str] | None = None) -> list[str]:
    """The worker's command line; through `accelerate launch` when a run has several processes.

    Each concurrent accelerate run needs its own rendezvous port, and a Ray node its own Python,
    so the command keeps {port} and {python} placeholders, filled on the machine that starts it.
    """
    module = ["-m", "ruscarl_lib.sweeps.run", *worker_args]
    if processes > 1 and accelerate_config:
        prefix = list(launcher) if launcher else [PYTHON_TOKEN, "-m", "accelerate.commands.launch"]
        return [*prefix, "--config_file", str(accelerate_config), "--num_processes", str(processes),
                "--main_process_port", PORT_TOKEN, *module]
    return [PYTHON_TOKEN, *module]


def _load_prctl():
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# Looked up here, not in the child: between fork and exec (other threads may hold the import
# lock) the child must only make the C call.
_PRCTL = _load_prctl() if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the worker (or its launcher) gets SIGKILL when whoever started it dies: a killed
    driver or Ray worker must not leave a run going that nobody waits for."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def execute_task(task: RunTask, extra_env: dict[str, str] | None = None, base_env: dict[str, str] | None = None
                 ) -> dict[str, Any]:
    """Run one worker process to the end; its outcome, or a failure naming the log."""
    env = {**(os.environ if base_env is None else base_env), **(extra_env or {}), **task.env}
    fill = {PORT_TOKEN: str(free_loopback_port()), PYTHON_TOKEN: sys.executable}
    command = [fill.get(part, part) for part in task.command]
    log_path = Path(task.log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"$ {' '.join(command)}\n".encode())
        log.flush()
        proc = subprocess.Popen(command, cwd=task.cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=_die_with_parent if _PRCTL is not None else None)
        rc = proc.wait()
    outcome = None
    for line in log_path.read_text(errors="replace").splitlines():
        if line.startswith(OUTCOME_PREFIX):
            outcome = json.loads(line[len(OUTCOME_PREFIX):])
    if outcome is None or (rc != 0 and outcome.get("status") == "done"):
        tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
        outcome = {"run_id": task.run_id, "status": "failed", "seconds": 0.0,
                   "error": f"worker exited with {rc}; see {log_path}: {' | '.join(tail)}"[:500]}
    return outcome


# --------------------------------------------------------------------------------------------
# This machine
# --------------------------------------------------------------------------------------------


def visible_gpus(env: dict[str, str] | None = None) -> list[str]:
    """The GPU ids runs may use: CUDA_VISIBLE_DEVICES when set (ids or UUIDs, as given), else
    every GPU `nvidia-smi -L` lists, else none."""
    env = os.environ if env is None else env
    if "CUDA_VISIBLE_DEVICES" in env:
        return [d.strip() for d in env["CUDA_VISIBLE_DEVICES"].split(",") if d.strip() and d.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(l for l in listing.splitlines() if l.startswith("GPU "))]


@dataclass
class LocalExecutor:
    """Runs as processes here, `max_parallel` at a time; with `gpus_per_run` N, each run holds
    its own N of the visible GPUs and the number of slices bounds the parallelism."""

    max_parallel: int | None = 1  # None with GPUs: one run per slice
    gpus_per_run: int = 0
    gpu_ids: list[str] | None = None  # default: visible_gpus()
    launcher: list[str] | None = None  # replaces `python -m accelerate.commands.launch` (tests)
    kind: str = field(default="local", init=False)

    def slices(self) -> list[tuple[str, ...]]:
        if self.gpus_per_run <= 0:
            return [()] * max(1, self.max_parallel or 1)
        ids = visible_gpus() if self.gpu_ids is None else list(self.gpu_ids)
        n = self.gpus_per_run
        if len(ids) < n:
            raise ExecutorError(f"--gpus-per-run {n}: only {len(ids)} GPU(s) visible ({','.join(ids) or 'none'})")
        cut = [tuple(ids[i * n:(i + 1) * n]) for i in range(len(ids) // n)]
        return cut[: max(1, self.max_parallel)] if self.max_parallel else cut

    def run(self, tasks: Sequence[RunTask], on_outcome: Callable[[dict[str, Any]], Any] | None = None
            ) -> list[dict[str, Any]]:
        slices = self.slices()
        free: queue.Queue[tuple[str, ...]] = queue.Queue()
        for s in slices:
            free.put(s)

        def one(task: RunTask) -> dict[str, Any]:
            devices = free.get()  # blocks until a slice is free: never two runs on one slice
            try:
                extra = {"CUDA_VISIBLE_DEVICES": ",".join(devices)} if self.gpus_per_run > 0 else {}
                outcome = execute_task(task, extra)
            finally:
                free.put(devices)
            if on_outcome:
                on_outcome(outcome)
            return outcome

        if len(slices) == 1 or len(tasks) <= 1:
            return [one(t) for t in tasks]
        with ThreadPoolExecutor(max_workers=min(len(slices), len(tasks))) as pool:
            return [f.result() for f in [pool.submit(one, t) for t in tasks]]


# --------------------------------------------------------------------------------------------
# A Ray cluster
# --------------------------------------------------------------------------------------------


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ExecutorError("--executor ray needs Ray, which is not installed: pip install 'ruscarl-lib[ray]' "
                            "(or use the default local executor)") from None
    return ray


def _ray_execute(task: RunTask) -> dict[str, Any]:  # runs inside a Ray worker
    return execute_task(task)


@dataclass
class RayExecutor:
    """Each run a Ray task with the sweep's per-run resources. The run root must be a folder every
    node sees at the same path (and so must the project and the sweep file). Ray does not retry a
    task: a run lost with its node is redone by the next `ruscarl sweep`, like any interrupted run.

    `address`: None starts a local Ray instance unless RAY_ADDRESS names one; "auto" joins the
    cluster of this node; "ray://host:10001" a remote one. An already initialised Ray is used as
    it is and left running."""

    address: str | None = None
    resources: ResourceSpec = field(default_factory=ResourceSpec)
    init_kwargs: dict[str, Any] = field(default_factory=dict)
    kind: str = field(default="ray", init=False)

    def run(self, tasks: Sequence[RunTask], on_outcome: Callable[[dict[str, Any]], Any] | None = None
            ) -> list[dict[str, Any]]:
        ray = _import_ray()
        started_here = not ray.is_initialized()
        if started_here:
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False, **self.init_kwargs)
        try:
            options: dict[str, Any] = {"num_cpus": self.resources.cpus, "num_gpus": self.resources.gpus,
                                       "max_retries": 0}
            if self.resources.memory_gb:
                options["memory"] = int(self.resources.memory_gb * 2**30)
            remote = ray.remote(_ray_execute).options(**options)
            pending = {remote.remote(t): t for t in tasks}
            by_id: dict[str, dict[str, Any]] = {}
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    task = pending.pop(ref)
                    try:
                        outcome = ray.get(ref)
                    except Exception as err:  # the task or its worker died
                        outcome = {"run_id": task.run_id, "status": "failed", "seconds": 0.0,
                                   "error": f"ray task failed: {type(err).__name__}: {err}"[:500]}
                    by_id[task.run_id] = outcome
                    if on_outcome:
                        on_outcome(outcome)
            return [by_id[t.run_id] for t in tasks]
        finally:
            if started_here:
                ray.shutdown()


def make_executor(kind: str, *, max_parallel: int | None = 1, gpus_per_run: int = 0, address: str | None = None,
                  resources: ResourceSpec | None = None) -> LocalExecutor | RayExecutor:
    if kind == "local":
        if address:
            raise ExecutorError("--address is for --executor ray")
        return LocalExecutor(max_parallel=max_parallel, gpus_per_run=gpus_per_run)
    if kind == "ray":
        _import_ray()  # fail before anything runs
        return RayExecutor(address=address, resources=resources or ResourceSpec())
    raise ExecutorError(f"unknown executor {kind!r} (local or ray)")
