"""How much a sandbox learning effect depends on the machine, the seed and the world.

Why: RL trajectories on CPU change with the float kernels and the thread count (a different
summation order flips a sampled token, and the run diverges from there). A claim such as
"RuscaRL beats plain rubric GRPO by 0.2 on held-out" is only worth asserting if it holds over
that spread, so the threshold of the CI test and every number in the README come from a
distribution measured here, not from one draw.

A *cell* is one (configuration, world seed, training seed, torch threads, kernel setting).
Each cell runs in its own process, because the kernel setting is read by torch, MKL and
oneDNN when they load (`ATEN_CPU_CAPABILITY`, `MKL_ENABLE_INSTRUCTIONS`, `ONEDNN_MAX_CPU_ISA`).
The warm start is rebuilt per (world, threads, kernel setting), as a machine of that kind
would build its own. Both arms of the cell train from that warm start with the same seed
(`compare.compare_arms`) and are evaluated without scaffolds. A cell's result is stored with a
digest of everything that produced it and reused only while that digest is unchanged.

A collapse is called by a stated rule on the RuscaRL arm's per-step curves (rollout table):
after smoothing over `COLLAPSE_SMOOTH` steps, the mean completion length or the mean reward
falls below half of its value at most `COLLAPSE_WITHIN` steps earlier, and is still below half
of it `COLLAPSE_RECOVERY` steps later (or at the end of the run). The reward is that of the
rollouts shown no scaffold (sample G-1 of every group has none), so the planned withdrawal of
the scaffold is not mistaken for a collapse. The reward rule only applies
once the smoothed reward has reached `COLLAPSE_REWARD_FLOOR`, so a curve near zero cannot
"collapse" by noise. The opposite degeneration is reported too: a *runaway* run is one where,
over the last tenth of training, more than `RUNAWAY_TRUNCATED` of the rollouts hit the
completion-length cap (seen in the sandbox as the same advice line repeated until the cap).
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ruscarl_lib.common.paths import atomic_write_text, resolve_path

__all__ = [
    "CONFIGS",
    "cells_table",
    "KERNELS",
    "Cell",
    "cell_params",
    "detect_collapse",
    "run_cells",
    "summarize",
]

# Kernel settings a CPU can run at. `avx2` caps ATen's dispatch and the MKL / oneDNN matrix
# kernels at AVX2, which is what a machine without AVX-512 runs.
KERNELS: dict[str, dict[str, str]] = {
    "default": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
}

# Named configurations: dotted overrides of the params file (params/sandbox.yaml).
# `default` is the demo's configuration, and the one tests/test_demo_sandbox.py runs in CI.
# `small` is the 8-condition world CI used before; it is kept for quick experiments, and its
# measured weaknesses are why CI no longer uses it: with a 750-step warm start, the start built
# on AVX2 kernels never learnt to copy hints (hinted positive rate 0.24 against 0.97 on
# AVX-512) and RuscaRL scored 0.000 there; with 1,500 steps it scored 0.005 on AVX-512 (the
# hinted answers repeat an advice, which its repeat criterion penalises).
SMALL_OVERRIDES: dict[str, Any] = {
    "sandbox.world.n_conditions": 8,
    "sandbox.world.n_train": 64,
    "sandbox.world.n_heldout": 48,  # 9 unseen pairs, 4 samples each: 192 graded answers
    "sandbox.world.n_validation": 16,
    "sandbox.world.repeat_points": 3,  # chosen on validation (world.WorldConfig docstring)
    "sandbox.policy": {"epochs": 6, "sft": {"n_examples": 4000}},
    "train.max_steps": 150,
    "train.save_steps": 75,
    "schedule_view.total_steps": 150,
}
CONFIGS: dict[str, dict[str, Any]] = {"default": {}, "small": SMALL_OVERRIDES}

COLLAPSE_SMOOTH = 10
COLLAPSE_WITHIN = 25
COLLAPSE_RECOVERY = 50
COLLAPSE_REWARD_FLOOR = 0.1
RUNAWAY_TRUNCATED = 0.5
_RESULT = "cell.json"  # per split: heldout_cell.json, validation_cell.json
_FORMAT = 1  # bump when what a cell computes changes


@dataclass(frozen=True)
class Cell:
    config: str
    world_seed: int | None  # None: the params file's own world seed
    seed: int
    threads: int
    kernel: str

    @property
    def name(self) -> str:
        world = "w-" if self.world_seed is None else f"w{self.world_seed}"
        return f"{self.config}_{world}_s{self.seed}_t{self.threads}_{self.kernel}"

    @property
    def policy_group(self) -> str:
        """Cells sharing a warm start (same config, world, threads and kernels)."""
        world = "w-" if self.world_seed is None else f"w{self.world_seed}"
        return f"{self.config}_{world}_t{self.threads}_{self.kernel}"


def cell_params(cell: Cell, params_file: str | Path, extra: dict[str, Any] | None = None):
    """The validated params of a cell: the file, the configuration's overrides, the world
    seed, then `extra` (a tuning value, say)."""
    from ruscarl_lib.params import load_params

    if cell.config not in CONFIGS:
        raise ValueError(f"unknown configuration {cell.config!r}; known: {sorted(CONFIGS)}")
    if cell.kernel not in KERNELS:
        raise ValueError(f"unknown kernel setting {cell.kernel!r}; known: {sorted(KERNELS)}")
    overrides = dict(CONFIGS[cell.config])
    if cell.world_seed is not None:
        overrides["sandbox.world.seed"] = cell.world_seed
    overrides.update(extra or {})
    return load_params(params_file, overrides)


def cell_digest(cell: Cell, params: Any, split: str) -> str:
    """Everything a cell's result depends on: the cell, the params (as `compare.params_digest`
    sees them, the resolved world and warm-start recipe included), the split and the kernels."""
    from ruscarl_lib.sandbox.compare import params_digest

    payload = {"cell": asdict(cell), "params": params_digest(params), "split": split,
               "env": KERNELS[cell.kernel], "format": _FORMAT}
    return hashlib.blake2b(json.dumps(payload, sort_keys=True, default=str).encode(), digest_size=8).hexdigest()


# --------------------------------------------------------------------------------------------
# Collapse rule
# --------------------------------------------------------------------------------------------


def _smooth(values: Sequence[float]) -> np.ndarray:
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return x
    kernel = np.ones(min(COLLAPSE_SMOOTH, len(x))) / min(COLLAPSE_SMOOTH, len(x))
    return np.convolve(x, kernel, mode="valid")


def _first_collapse(series: Sequence[float], floor: float) -> int | None:
    """Index (in the smoothed series) where the collapse rule first fires, else None."""
    x = _smooth(series)
    for t in range(1, len(x)):
        window = x[max(0, t - COLLAPSE_WITHIN) : t]
        peak = float(window.max())
        if peak < floor or x[t] >= 0.5 * peak:
            continue
        later = x[min(len(x) - 1, t + COLLAPSE_RECOVERY)]
        if later < 0.5 * peak:
            return t
    return None


def detect_collapse(steps: Any) -> dict[str, Any]:
    """Apply the module's collapse rule to a per-step table (`analysis.curves.step_stats` columns
    `rl_step`, `completion_tokens_mean` and `reward_unscaffolded`, else `reward_mean`)."""
    steps = steps.sort_values("rl_step")
    out: dict[str, Any] = {"collapsed": False, "collapse_step": None, "collapse_signal": None}
    reward = "reward_unscaffolded" if "reward_unscaffolded" in steps else "reward_mean"
    for signal, column, floor in (("length", "completion_tokens_mean", 2.0),
                                  ("reward", reward, COLLAPSE_REWARD_FLOOR)):
        if column not in steps:
            continue
        at = _first_collapse(steps[column].fillna(0.0).tolist(), floor)
        if at is not None:
            step = int(steps["rl_step"].iloc[at + min(COLLAPSE_SMOOTH, len(steps)) - 1])
            if out["collapse_step"] is None or step < out["collapse_step"]:
                out.update(collapsed=True, collapse_step=step, collapse_signal=signal)
    return out


def run_summary(run_dir: str | Path) -> dict[str, Any]:
    """Zero-variance share, reward and length at start and end, and the collapse verdict."""

    from ruscarl_lib.analysis.runs import load_run
    from ruscarl_lib.analysis.curves import step_stats

    run = load_run(run_dir)
    steps = step_stats([run])
    if steps.empty:
        return {"collapsed": None}
    if "n_shown" in run.rollouts:
        bare = run.rollouts[run.rollouts["n_shown"] == 0].groupby("rl_step")["reward"].mean()
        steps = steps.merge(bare.rename("reward_unscaffolded"), left_on="rl_step", right_index=True, how="left")
    tail = steps.tail(max(1, len(steps) // 10))
    head = steps.head(max(1, len(steps) // 10))
    out = detect_collapse(steps)
    out.update(
        zero_var_frac=round(float(steps["zero_var_frac"].mean()), 4) if "zero_var_frac" in steps else None,
        reward_first=round(float(head["reward_mean"].mean()), 4),
        reward_last=round(float(tail["reward_mean"].mean()), 4),
        length_first=round(float(head["completion_tokens_mean"].mean()), 2),
        length_last=round(float(tail["completion_tokens_mean"].mean()), 2),
    )
    cap = (run.params or {}).get("train", {}).get("max_completion_length")
    if cap and "completion_tokens" in run.rollouts:
        last = run.rollouts[run.rollouts["rl_step"] > steps["rl_step"].max() * 0.9]
        share = float((last["completion_tokens"] >= int(cap)).mean()) if len(last) else 0.0
        out.update(truncated_last=round(share, 4), runaway=share > RUNAWAY_TRUNCATED)
    return out


# --------------------------------------------------------------------------------------------
# Running cells
# --------------------------------------------------------------------------------------------


def _cell_env(cell: Cell) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA")}
    env.update(KERNELS[cell.kernel])
    threads = str(cell.threads)
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, TRL_EXPERIMENTAL_SILENCE="1",
               TQDM_DISABLE="1", PYTHONUNBUFFERED="1")
    return env


def run_cell_here(cell: Cell, params_file: str, root: Path, split: str, extra: dict[str, Any]) -> dict[str, Any]:
    """Run one cell in this process (the kernel settings must already be in the environment)."""
    import torch

    from ruscarl_lib.sandbox.compare import compare_arms

    torch.set_num_threads(cell.threads)
    params = cell_params(cell, params_file, extra)
    params.sandbox.cache_dir = str(root / "policies" / cell.policy_group)
    folder = cell_folder(root, cell, extra)
    t0 = time.perf_counter()
    table = compare_arms(params, [cell.seed], folder, progress=False, split=split)
    by_arm = {r["arm"]: r for r in table.to_dict("records")}
    result: dict[str, Any] = {**asdict(cell), "split": split, "extra": extra,
                              "capability": torch.backends.cpu.get_cpu_capability()}
    for arm in ("start", "ruscarl", "baseline"):
        r = by_arm[arm]
        result[arm] = r["score"]
        result[f"{arm}_unclipped"] = r.get("score_unclipped")
    result["gap"] = round(result["ruscarl"] - result["baseline"], 4)
    for arm in ("ruscarl", "baseline"):
        result[f"{arm}_run"] = run_summary(folder / f"seed{cell.seed}" / arm / "run")
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def _run_in_subprocess(cell: Cell, params_file: str, root: Path, split: str, extra: dict[str, Any],
                       digest: str) -> dict[str, Any]:
    folder = cell_folder(root, cell, extra)
    folder.mkdir(parents=True, exist_ok=True)
    spec = json.dumps({"cell": asdict(cell), "params_file": params_file, "root": str(root),
                       "split": split, "extra": extra})
    log = folder / f"log_{split}.txt"
    with log.open("w") as fh:
        proc = subprocess.run([sys.executable, "-m", "ruscarl_lib.sandbox.robustness", spec],
                              env=_cell_env(cell), stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"cell {cell.name} failed (exit {proc.returncode}); log {log}:\n{tail}")
    result = json.loads((folder / "result.tmp.json").read_text())
    result["digest"] = digest
    atomic_write_text(folder / f"{split}_{_RESULT}", json.dumps(result, indent=2))
    return result


def cell_folder(root: Path, cell: Cell, extra: dict[str, Any] | None) -> Path:
    """A cell's folder; runs with overrides get their own (named by a digest of them), so a
    tuning variant never replaces the plain cell. Both splits share the folder and its
    training runs (`compare._train`)."""
    name = cell.name
    if extra:
        name += "_set-" + hashlib.blake2b(json.dumps(extra, sort_keys=True, default=str).encode(),
                                          digest_size=4).hexdigest()
    return root / "cells" / name


def effective_overrides(cells: Sequence[Cell], params_file: str | Path, extra: dict[str, Any]) -> dict[str, Any]:
    """`extra` without the overrides that change nothing (the file or the configuration already
    has that value), so `--set k=v` run before v became the default and a plain run afterwards
    name the same cell folder."""
    kept = dict(extra)
    for key in list(kept):
        rest = {k: v for k, v in kept.items() if k != key}
        if all(cell_params(c, params_file, kept).model_dump() == _params_or_none(c, params_file, rest)
               for c in cells):
            kept = rest
    return kept


def _params_or_none(cell: Cell, params_file: str | Path, overrides: dict[str, Any]) -> dict[str, Any] | None:
    """The cell's params, or None where the overrides are only valid together with the one left
    out (`train.kl_log_ratio_cap` without `train.kl_coef`): that one then changes something."""
    try:
        return cell_params(cell, params_file, overrides).model_dump()
    except ValueError:  # ParamsError: the combination is refused
        return None


def load_cell(root: Path, cell: Cell, digest: str, split: str, extra: dict[str, Any] | None) -> dict[str, Any] | None:
    path = cell_folder(root, cell, extra) / f"{split}_{_RESULT}"
    if path.is_file():
        result = json.loads(path.read_text())
        if result.get("digest") == digest:
            return result
    return None


def run_cells(
    cells: Iterable[Cell],
    params_file: str | Path,
    out_dir: str | Path,
    *,
    split: str = "heldout",
    extra: dict[str, Any] | None = None,
    jobs: int = 1,
    echo=print,
) -> list[dict[str, Any]]:
    """Run (or reuse) every cell; cells sharing a warm start run one after another, groups
    run `jobs` at a time. A finished cell is reused only while its digest is unchanged."""
    root = resolve_path(out_dir)
    params_file = str(resolve_path(params_file))
    cells = list(cells)
    extra = effective_overrides(cells, params_file, extra or {})
    groups: dict[str, list[Cell]] = {}
    for cell in cells:
        groups.setdefault(cell.policy_group, []).append(cell)
    results: dict[Cell, dict[str, Any]] = {}
    done = [0]

    def run_group(members: list[Cell]) -> None:
        for cell in members:
            digest = cell_digest(cell, cell_params(cell, params_file, extra), split)
            result = load_cell(root, cell, digest, split, extra)
            how = "reused"
            if result is None:
                result = _run_in_subprocess(cell, params_file, root, split, extra, digest)
                how = f"{result['seconds']:.0f}s"
            results[cell] = result
            done[0] += 1
            echo(f"[robustness] {done[0]}/{len(cells)} {cell.name}: ruscarl {result['ruscarl']:.3f} "
                 f"baseline {result['baseline']:.3f} gap {result['gap']:+.3f} "
                 f"collapse {result['ruscarl_run'].get('collapsed')} runaway {result['ruscarl_run'].get('runaway')} ({how})")

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for future in [pool.submit(run_group, g) for g in groups.values()]:
            future.result()
    return [results[c] for c in cells]


def summarize(results: Sequence[dict[str, Any]], threshold: float) -> dict[str, Any]:
    """min / median / max of the gap, share of cells at or above `threshold`, collapses."""
    gaps = [r["gap"] for r in results]
    def name(r: dict[str, Any]) -> str:
        return Cell(r["config"], r["world_seed"], r["seed"], r["threads"], r["kernel"]).name

    collapses = [name(r) for r in results if r["ruscarl_run"].get("collapsed")]
    runaways = [name(r) for r in results if r["ruscarl_run"].get("runaway")]
    return {
        "n": len(gaps),
        "gap_min": round(min(gaps), 4) if gaps else None,
        "gap_median": round(statistics.median(gaps), 4) if gaps else None,
        "gap_max": round(max(gaps), 4) if gaps else None,
        "threshold": threshold,
        "frac_clear": round(sum(g >= threshold for g in gaps) / len(gaps), 4) if gaps else None,
        "collapses": collapses,
        "runaways": runaways,
        "ruscarl_median": round(statistics.median(r["ruscarl"] for r in results), 4) if gaps else None,
        "baseline_max": round(max(r["baseline"] for r in results), 4) if gaps else None,
        "baseline_unclipped_median": (round(statistics.median(r["baseline_unclipped"] for r in results), 4)
                                      if gaps and all(r.get("baseline_unclipped") is not None for r in results) else None),
        "baseline_zero_var_median": (round(statistics.median(r["baseline_run"]["zero_var_frac"] for r in results), 4)
                                     if gaps and all(r["baseline_run"].get("zero_var_frac") is not None for r in results) else None),
    }


def cells_table(results: Sequence[dict[str, Any]]) -> str:
    """One markdown row per cell: scores (clipped and unclipped), the gap, the baseline's share of
    zero-variance groups, and the RuscaRL run's degeneration flags."""
    lines = ["| config | world | seed | threads | kernels | ruscarl | baseline (unclipped) | gap | "
             "baseline zero-var groups | collapse / runaway |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in sorted(results, key=lambda r: (r["config"], str(r["world_seed"]), r["kernel"], r["threads"], r["seed"])):
        run = r["ruscarl_run"]
        world = "default" if r["world_seed"] is None else r["world_seed"]
        flags = "/".join(["collapse" if run.get("collapsed") else "-", "runaway" if run.get("runaway") else "-"])
        lines.append(f"| {r['config']} | {world} | {r['seed']} | {r['threads']} | {r['kernel']} | {r['ruscarl']:.3f} | "
                     f"{r['baseline']:.3f} ({r.get('baseline_unclipped')}) | {r['gap']:+.3f} | "
                     f"{r['baseline_run'].get('zero_var_frac')} | {flags} |")
    return "\n".join(lines) + "\n"


def _main(spec_json: str) -> None:
    spec = json.loads(spec_json)
    cell = Cell(**spec["cell"])
    root = Path(spec["root"])
    result = run_cell_here(cell, spec["params_file"], root, spec["split"], spec["extra"])
    atomic_write_text(cell_folder(root, cell, spec["extra"]) / "result.tmp.json", json.dumps(result, indent=2))


if __name__ == "__main__":
    _main(sys.argv[1])
