"""RuscaRL against the plain rubric-GRPO baseline on the sandbox, over several training seeds.

Why: one demo run is one draw. The issue's target ("RuscaRL beats the baseline by at least
0.25 on the held-out split, for each of 3 seeds") needs the same pipeline repeated with only
the seed changed: one prepared world and warm start, then for every seed both arms trained
through `training.run_training` (identical params except `scaffold.enabled`) and evaluated
unscaffolded through `evaluation.run_evaluation`, exactly as notebooks 03 and 04 do. Each
(seed, arm) result is saved as it finishes, so an interrupted comparison resumes.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from ..params import Params
from ..paths import atomic_write_text, resolve_path
from .prepare import prepare_sandbox

__all__ = ["ARMS", "compare_arms", "comparison_summary"]

ARMS = {"ruscarl": True, "baseline": False}  # arm name -> scaffold.enabled
_RESULT = "result.json"


def _run_arm(params: Params, seed: int, arm: str, root: Path, progress: bool) -> dict[str, Any]:
    from ..evaluation import run_evaluation
    from ..training import run_training

    folder = root / f"seed{seed}" / arm
    done = folder / _RESULT
    if done.is_file():
        return json.loads(done.read_text())
    shutil.rmtree(folder, ignore_errors=True)  # a half-finished arm is redone from scratch
    p = params.model_copy(deep=True)
    p.seed = seed
    p.scaffold.seed = seed
    p.scaffold.enabled = ARMS[arm]
    p.output.dir = str(folder)
    p.output.run_name = "run"
    t0 = time.perf_counter()
    result = run_training(p)
    seconds = time.perf_counter() - t0
    p.eval.adapter = str(result.adapter_dir)
    report = run_evaluation(p, folder / "eval", progress=progress)
    row = {"seed": seed, "arm": arm, "heldout_score": report.score, "heldout_std": report.std,
           "n_responses": report.n_responses, "train_seconds": round(seconds, 1)}
    atomic_write_text(done, json.dumps(row, indent=2))
    return row


def compare_arms(
    params: Params,
    seeds: Sequence[int],
    out_dir: str | Path,
    *,
    progress: bool = True,
) -> pd.DataFrame:
    """Train and evaluate both arms for every seed; one row per (seed, arm), plus the starting
    policy's held-out score (unhinted) as arm `start` (seed-independent, evaluated once)."""
    from ..evaluation import run_evaluation

    root = resolve_path(out_dir)
    files = prepare_sandbox(params, root / "sandbox")
    rows = []
    start = root / "start" / _RESULT
    if not start.is_file():
        report = run_evaluation(files.params, root / "start" / "eval", progress=progress)
        atomic_write_text(start, json.dumps({"seed": None, "arm": "start", "heldout_score": report.score,
                                             "heldout_std": report.std, "n_responses": report.n_responses,
                                             "train_seconds": 0.0}, indent=2))
    rows.append(json.loads(start.read_text()))
    for seed in seeds:
        for arm in ARMS:
            rows.append(_run_arm(files.params, int(seed), arm, root, progress))
    return pd.DataFrame(rows)


def comparison_summary(table: pd.DataFrame) -> dict[str, Any]:
    """Per-seed gaps (RuscaRL minus baseline), their mean and spread, and the arms' means."""
    wide = table[table["arm"].isin(list(ARMS))].pivot(index="seed", columns="arm", values="heldout_score")
    gaps = (wide["ruscarl"] - wide["baseline"]).tolist()
    out: dict[str, Any] = {
        "seeds": [int(s) for s in wide.index],
        "gap_per_seed": [round(g, 4) for g in gaps],
        "gap_mean": round(statistics.fmean(gaps), 4),
        "gap_min": round(min(gaps), 4),
        "gap_sd": round(statistics.stdev(gaps), 4) if len(gaps) > 1 else 0.0,
    }
    for arm in ARMS:
        out[f"{arm}_mean"] = round(float(wide[arm].mean()), 4)
    start = table[table["arm"] == "start"]["heldout_score"]
    out["start_score"] = round(float(start.iloc[0]), 4) if len(start) else None
    return out
