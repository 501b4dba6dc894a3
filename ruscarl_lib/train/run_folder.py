"""What a training run leaves on disk, and how to read it back.

Layout of `outputs/<run>/`:
  metrics.jsonl           one JSON object per logged optimizer step (TRL's metrics + scaffold ones)
  rollouts/step_000001.parquet   every rollout of RL step 1 (prompt, scaffold, completion, reward)
  checkpoints/checkpoint-N/      LoRA + optimizer + trainer state every few steps
  adapter/ or model/      the final weights and tokenizer: a LoRA adapter, or under
                          `train.finetune: full` the whole model (`final_weights_dir`)
  params.yaml, versions.json     what produced the run
  trainer.json            the trainer class, its GRPO base (TRL's or Unsloth's) and effective args
  contract.json           the live clean-prompt check of the first RL step this process trained

Files are written through a temporary file and renamed, so a crash or a reader never sees half
a file. After a resume, metrics past the checkpoint are dropped and the rollout files of
re-run steps are overwritten, so each step appears once. No transformers import at module
level: notebooks read runs without touching the training stack.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import platform
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from ruscarl_lib.common.paths import atomic_write_parquet, atomic_write_text

METRICS_FILE = "metrics.jsonl"
ROLLOUTS_DIR = "rollouts"
CHECKPOINTS_DIR = "checkpoints"
ADAPTER_DIR = "adapter"  # final LoRA adapter (train.finetune: lora)
MODEL_DIR = "model"  # final full weights (train.finetune: full)
PARAMS_FILE = "params.yaml"
VERSIONS_FILE = "versions.json"
TRAINER_FILE = "trainer.json"
CONTRACT_FILE = "contract.json"

def final_weights_dir(run_dir: str | Path, finetune: str) -> Path:
    """Where a finished run saves its weights, named for what they are: `adapter/` for LoRA,
    `model/` for full fine-tuning (a folder called adapter holding a whole model misleads)."""
    return Path(run_dir) / (MODEL_DIR if finetune == "full" else ADAPTER_DIR)


def is_training_run(path: str | Path) -> bool:
    """Whether `path` is a training run folder (it holds the params and metrics of a run)."""
    p = Path(path)
    return (p / PARAMS_FILE).is_file() and (p / METRICS_FILE).is_file()


def trained_weights(path: str | Path, *, run_folder: bool = False) -> Path:
    """`path` itself, or, when it is a training run folder, the final weights saved inside it,
    so evaluations can name the run rather than know whether it trained LoRA or every weight.
    `run_folder=True`: `path` must be a training run folder."""
    p = Path(path)
    if not is_training_run(p):
        if run_folder:
            raise FileNotFoundError(f"{p} is not a training run folder (no {PARAMS_FILE} and {METRICS_FILE}): "
                                    "has the training run started?")
        return p
    found = [d for d in (p / ADAPTER_DIR, p / MODEL_DIR) if d.is_dir()]
    if not found:
        raise FileNotFoundError(f"training run {p} has no final weights ({ADAPTER_DIR}/ or {MODEL_DIR}/): "
                                "has it finished?")
    return max(found, key=lambda d: d.stat().st_mtime)  # both only if finetune changed under --fresh


_VERSIONED = (
    "torch", "transformers", "trl", "peft", "accelerate", "datasets", "tokenizers",
    "unsloth", "vllm", "bitsandbytes", "deepspeed", "numpy", "pandas", "pyarrow", "ruscarl-lib",
)


def _json_safe(value: Any) -> Any:
    """Floats that JSON cannot hold (nan, inf) become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --------------------------------------------------------------------------------------------
# Rollout table
# --------------------------------------------------------------------------------------------


def _cell(value: Any) -> Any:
    """Keep scalars and lists of ints; encode anything nested as JSON so parquet stays flat."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return list(value)
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except TypeError:
        return str(value)


class RolloutTableWriter:
    """Writes the records of each RL step to `rollouts/step_NNNNNN.parquet` (atomically)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.dir = Path(run_dir) / ROLLOUTS_DIR
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, rl_step: int) -> Path:
        return self.dir / f"step_{rl_step:06d}.parquet"

    def __call__(self, rl_step: int, records: list[dict[str, Any]]) -> Path:
        frame = pd.DataFrame([{k: _cell(v) for k, v in r.items()} for r in records])
        return atomic_write_parquet(self.path(rl_step), frame)


def read_rollouts(run_dir: str | Path, steps: Iterable[int] | None = None) -> pd.DataFrame:
    """All rollout records of a run (or of some RL steps), in step order."""
    folder = Path(run_dir) / ROLLOUTS_DIR
    files = sorted(folder.glob("step_*.parquet"))
    if steps is not None:
        wanted = {int(s) for s in steps}
        files = [f for f in files if int(f.stem.split("_")[1]) in wanted]
    if not files:
        return pd.DataFrame()
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def append_metrics(path: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON line (a single write call, so lines never interleave)."""
    line = json.dumps({k: _json_safe(v) for k, v in record.items()}, default=str) + "\n"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()


def read_metrics(run_dir: str | Path, kind: str | None = "train") -> pd.DataFrame:
    """The run's metrics lines of one `kind` (None: all of them)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return pd.DataFrame()
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if kind is not None:
        rows = [r for r in rows if r.get("kind", "train") == kind]
    return pd.DataFrame(rows)


def truncate_metrics(path: str | Path, max_step: int) -> int:
    """Drop lines logged after optimizer step `max_step` (they are about to be re-run).

    Returns how many lines were dropped.
    """
    path = Path(path)
    if not path.exists():
        return 0
    keep, dropped = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            step = json.loads(line).get("step", 0)
        except json.JSONDecodeError:  # a torn last line from a hard kill
            dropped += 1
            continue
        if step is not None and step > max_step:
            dropped += 1
        else:
            keep.append(line)
    atomic_write_text(path, "".join(x + "\n" for x in keep))
    return dropped


def prune_rollouts(run_dir: str | Path, max_rl_step: int) -> int:
    """Delete rollout files of RL steps after `max_rl_step` (they will be regenerated)."""
    removed = 0
    for f in (Path(run_dir) / ROLLOUTS_DIR).glob("step_*.parquet"):
        if int(f.stem.split("_")[1]) > max_rl_step:
            f.unlink()
            removed += 1
    return removed


def metrics_callback(path: str | Path, extra: dict[str, Any] | None = None):
    """A TrainerCallback appending every log to `path` (main process only).

    Each line has `step` (optimizer step) and `kind`: `train` (one per logged update),
    `eval`, or `summary` (the totals logged when training ends).
    """
    from transformers import TrainerCallback

    target = Path(path)
    fixed = dict(extra or {})

    class MetricsJsonlCallback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            if any(k.startswith("eval_") for k in logs):
                kind = "eval"
            elif "train_runtime" in logs:
                kind = "summary"
            else:
                kind = "train"
            append_metrics(target, {"step": state.global_step, "kind": kind, **fixed, **logs})

    return MetricsJsonlCallback()


# --------------------------------------------------------------------------------------------
# Provenance
# --------------------------------------------------------------------------------------------


def library_versions() -> dict[str, str | None]:
    """Versions of the packages that shape a run (None when not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    try:
        import torch

        out["cuda"] = torch.version.cuda
        out["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except Exception:  # pragma: no cover - torch is a dependency
        pass
    return out


def write_versions(run_dir: str | Path) -> Path:
    path = Path(run_dir) / VERSIONS_FILE
    return atomic_write_text(path, json.dumps(library_versions(), indent=2) + "\n")


def write_trainer_record(run_dir: str | Path, record: dict[str, Any]) -> Path:
    """trainer.json: which trainer class (and GRPO base) trained the run, with its effective args."""
    return _write_record(Path(run_dir) / TRAINER_FILE, record)


def write_contract_report(run_dir: str | Path, report: dict[str, Any]) -> Path:
    """contract.json: what the live check saw on the first RL step (rollouts, scaffolded ones,
    loss rows, and that the loss prompt was the clean one), so a report can show it."""
    return _write_record(Path(run_dir) / CONTRACT_FILE, report)


def _write_record(path: Path, record: dict[str, Any]) -> Path:
    return atomic_write_text(path, json.dumps(record, indent=2, default=str) + "\n")
