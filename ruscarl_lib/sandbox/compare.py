"""RuscaRL against the plain rubric-GRPO baseline on the sandbox, over several training seeds.

Why: one demo run is one draw. A learning-effect claim needs the same pipeline repeated with
only the seed changed: one prepared world and warm start, then for every seed both arms trained
through `train.run.run_training` (identical params except `scaffold.enabled`) and evaluated
unscaffolded through `evaluate.run.run_evaluation`, exactly as notebooks 03 and 04 do.

Results are evaluated on one split: `validation` while choosing hyperparameters, `heldout`
for reporting. Each (seed, arm) result is saved as it finishes together with a digest of
the params that produced it, and reused only while that digest is unchanged: a rerun on
another world, recipe or split recomputes instead of returning the old numbers. The training
run behind a result is keyed without the split, so evaluating a finished arm on the other
split costs an evaluation, not a second training.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from ruscarl_lib.params import Params
from ruscarl_lib.common.paths import atomic_write_text, resolve_path
from ruscarl_lib.sandbox.prepare import SandboxFiles, prepare_sandbox

__all__ = ["ARMS", "SPLITS", "compare_arms", "comparison_summary", "params_digest"]

ARMS = {"ruscarl": True, "baseline": False}  # arm name -> scaffold.enabled
SPLITS = ("validation", "heldout")
_RESULT = "result.json"  # per split: heldout_result.json, validation_result.json
_TRAINED = "trained.json"


def params_digest(params: Params, **extra: Any) -> str:
    """Digest of everything that changes a sandbox result. File paths count by their name only
    (the prepared files' content follows from the `sandbox` section, and the warm start's
    folder name is its own content key), so the same comparison under another root matches."""
    tree = params.model_dump(mode="json")
    for section, key in (("data", "path"), ("train", "model"), ("eval", "data_path"), ("eval", "adapter"),
                         ("output", "dir"), ("sandbox", "cache_dir"), ("judge", "cache_path")):
        value = tree.get(section, {}).get(key)
        if value:
            tree[section][key] = Path(str(value)).name
    from ruscarl_lib import __version__
    from ruscarl_lib.sandbox.policy import POLICY_FORMAT
    from ruscarl_lib.sandbox.prepare import policy_config, world_config

    # the resolved world and recipe, so a default added to WorldConfig / PolicyConfig counts too
    tree["sandbox"]["world"] = world_config(params).to_dict()
    tree["sandbox"]["policy"] = policy_config(params).to_dict()
    payload = json.dumps({"params": tree, "policy_format": POLICY_FORMAT, "extra": extra, "version": __version__},
                         sort_keys=True, default=str)
    return hashlib.blake2b(payload.encode(), digest_size=8).hexdigest()


def _cached(path: Path, digest: str) -> dict[str, Any] | None:
    if path.is_file():
        row = json.loads(path.read_text())
        if row.get("digest") == digest:
            return row
    return None


def _evaluate(params: Params, out: Path, progress: bool) -> dict[str, Any]:
    from ruscarl_lib.evaluate.run import run_evaluation

    shutil.rmtree(out, ignore_errors=True)  # never resume an evaluation of other weights
    report = run_evaluation(params, out, progress=progress)
    scores = pd.read_parquet(out / "scores.parquet")["score"].dropna()
    return {"score": report.score, "std": report.std,
            "score_unclipped": round(float(scores.mean()), 4) if len(scores) else None,
            "n_responses": report.n_responses}


def _eval_params(files: SandboxFiles, split: str) -> Params:
    p = files.params.model_copy(deep=True)
    p.eval.data_path = str({"heldout": files.heldout_path, "validation": files.validation_path}[split])
    return p


def _run_arm(files: SandboxFiles, seed: int, arm: str, root: Path, split: str, progress: bool) -> dict[str, Any]:
    p = _eval_params(files, split)
    p.seed = seed
    p.scaffold.seed = seed
    p.scaffold.enabled = ARMS[arm]
    folder = root / f"seed{seed}" / arm
    p.output.dir = str(folder)
    p.output.run_name = "run"
    digest = params_digest(p, arm=arm, split=split)
    row = _cached(folder / f"{split}_{_RESULT}", digest)
    if row is not None:
        return row
    trained = _train(p, arm, folder)
    p.eval.adapter = str(folder / trained["weights"])
    row = {"seed": seed, "arm": arm, "split": split, **_evaluate(p, folder / f"eval_{split}", progress),
           "train_seconds": trained["train_seconds"], "digest": digest}
    atomic_write_text(folder / f"{split}_{_RESULT}", json.dumps(row, indent=2))
    return row


def _train(p: Params, arm: str, folder: Path) -> dict[str, Any]:
    """Train one arm, or reuse its finished training: the split only changes what is
    evaluated, so validation and held-out results of the same params share one training run."""
    from ruscarl_lib.train.run import run_training

    untied = p.model_copy(deep=True)
    untied.eval.data_path = None  # the training does not depend on the evaluation split
    digest = params_digest(untied, arm=arm, stage="train")
    marker = folder / _TRAINED
    done = _cached(marker, digest)
    if done is not None and "weights" in done and (folder / done["weights"]).is_dir():
        return done
    shutil.rmtree(folder, ignore_errors=True)  # stale or half-finished: redone from scratch
    t0 = time.perf_counter()
    result = run_training(p)
    done = {"weights": os.path.relpath(result.weights_dir, folder),
            "train_seconds": round(time.perf_counter() - t0, 1), "digest": digest}
    atomic_write_text(marker, json.dumps(done, indent=2))
    return done


def compare_arms(
    params: Params,
    seeds: Sequence[int],
    out_dir: str | Path,
    *,
    split: str = "heldout",
    arms: Sequence[str] = tuple(ARMS),
    progress: bool = True,
) -> pd.DataFrame:
    """Train and evaluate the arms (both by default) for every seed; one row per (seed, arm),
    plus the starting policy's score (unhinted) as arm `start` (seed-independent, evaluated
    once). Columns: seed, arm, split, score (clipped mean, the HealthBench number), std,
    score_unclipped. Tuning may train only `ruscarl`: the baseline does not depend on the
    scaffold settings being tuned."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        raise ValueError(f"unknown arm(s) {unknown}; known: {sorted(ARMS)}")
    root = resolve_path(out_dir)
    files = prepare_sandbox(params, root / "sandbox")
    start_params = _eval_params(files, split)
    digest = params_digest(start_params, arm="start", split=split)
    start_file = root / "start" / f"{split}_{_RESULT}"
    start = _cached(start_file, digest)
    if start is None:
        start = {"seed": None, "arm": "start", "split": split,
                 **_evaluate(start_params, root / "start" / f"eval_{split}", progress),
                 "train_seconds": 0.0, "digest": digest}
        atomic_write_text(start_file, json.dumps(start, indent=2))
    rows = [start]
    for seed in seeds:
        for arm in arms:
            rows.append(_run_arm(files, int(seed), arm, root, split, progress))
    return pd.DataFrame(rows)


def comparison_summary(table: pd.DataFrame) -> dict[str, Any]:
    """Per-seed gaps (RuscaRL minus baseline), their mean and spread, and the arms' means
    (clipped, and unclipped next to it)."""
    arms = table[table["arm"].isin(list(ARMS))]
    wide = arms.pivot(index="seed", columns="arm", values="score")
    gaps = (wide["ruscarl"] - wide["baseline"]).tolist()
    out: dict[str, Any] = {
        "split": str(table["split"].iloc[0]),
        "seeds": [int(s) for s in wide.index],
        "gap_per_seed": [round(g, 4) for g in gaps],
        "gap_mean": round(statistics.fmean(gaps), 4),
        "gap_min": round(min(gaps), 4),
        "gap_sd": round(statistics.stdev(gaps), 4) if len(gaps) > 1 else 0.0,
    }
    unclipped = arms.pivot(index="seed", columns="arm", values="score_unclipped")
    for arm in ARMS:
        out[f"{arm}_mean"] = round(float(wide[arm].mean()), 4)
        out[f"{arm}_unclipped_mean"] = round(float(unclipped[arm].mean()), 4)
    start = table[table["arm"] == "start"]
    out["start_score"] = round(float(start["score"].iloc[0]), 4) if len(start) else None
    return out
