"""Start-up checks of a built GRPO trainer: it is the trainer and the algorithm the params ask for.

Unsloth changes things silently: on a GPU `import unsloth` swaps `trl.GRPOTrainer` for its own
generated class, its GRPOConfig fills unset fields with its own defaults (`epsilon_high` 0.28
under DAPO, `optim` adamw_8bit, eval batch size 4, ...), its trainer may rewrite the precision
flags and, without `steps_per_generation`, the per-device batch size; its source rewrites report
a failed patch only as a log warning. So after the trainer is built, and before it trains:

- `check_base_class`: with backend `unsloth` on a GPU the base class must be Unsloth's;
- `check_geometry`: prompts per step x G and updates per step are the params' (both geometries
  side by side otherwise);
- `check_effective_args`: every algorithm setting we passed is what the trainer holds;
- `check_trainable`: a LoRA run trains LoRA weights only (Unsloth's trainer ignores
  `peft_config`, which would silently train the whole model);
- `trainer_record`: what was built (classes, MRO, effective `args`) for the run folder;
- `unsloth_failures_as_errors`: Unsloth's "patch may have failed" warnings raise instead.
Both backends go through the same checks, so both train the same algorithm.
"""

from __future__ import annotations

import logging
import math
import warnings
from contextlib import contextmanager
from typing import Any, Iterator

from ruscarl_lib.params import TrainParams


class TrainerMismatch(RuntimeError):
    """The trainer that was built is not the one (or not the algorithm) the params ask for."""


# --------------------------------------------------------------------------------------------
# Base class
# --------------------------------------------------------------------------------------------


def is_unsloth_class(cls: type) -> bool:
    """True for Unsloth's generated trainers (`UnslothGRPOTrainer` and its `_Unsloth...` base)."""
    return any(k.__name__.lstrip("_").startswith("Unsloth") for k in cls.__mro__)


def check_base_class(base: type, backend: str, *, gpu: bool) -> None:
    """With backend `unsloth` on a GPU, stop unless the trainer is built on Unsloth's class."""
    if backend == "unsloth" and gpu and not is_unsloth_class(base):
        raise TrainerMismatch(
            f"backend 'unsloth' on a GPU, but the trainer is built on {base.__module__}."
            f"{base.__qualname__}, not on Unsloth's rewritten GRPOTrainer: Unsloth did not patch "
            "TRL (imported after trl/transformers/peft, or its patch failed). Import unsloth "
            "first (training.prepare_backend does), or use backend: transformers."
        )


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------


def expected_geometry(tp: TrainParams, world_size: int) -> dict[str, int]:
    from ruscarl_lib.train.config import batch_geometry

    geo = batch_geometry(tp, world_size)
    return {
        "prompts_per_step": tp.prompts_per_step,
        "group_size": tp.group_size,
        "completions_per_step": geo.completions_per_step,
        "updates_per_step": tp.updates_per_step,
        "per_device_train_batch_size": tp.per_device_batch_size,
        "gradient_accumulation_steps": geo.gradient_accumulation_steps,
        "steps_per_generation": geo.steps_per_generation,
        "world_size": world_size,
    }


def trainer_geometry(args: Any, world_size: int) -> dict[str, float]:
    """The RL-step geometry a GRPOConfig implies (TRL: one generation batch per RL step)."""
    completions = args.per_device_train_batch_size * args.steps_per_generation * world_size
    G = args.num_generations
    return {
        "prompts_per_step": completions / G if G else math.nan,
        "group_size": G,
        "completions_per_step": completions,
        "updates_per_step": args.steps_per_generation / args.gradient_accumulation_steps,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "steps_per_generation": args.steps_per_generation,
        "world_size": world_size,
    }


def _side_by_side(title: str, want: dict[str, Any], got: dict[str, Any], keys) -> str:
    lines = [title, f"  {'':30s} {'params':>14s} {'trainer':>14s}"]
    for k in keys:
        mark = "" if want.get(k) == got.get(k) else "   <-- differs"
        lines.append(f"  {k:30s} {want.get(k)!s:>14s} {got.get(k)!s:>14s}{mark}")
    return "\n".join(lines)


def check_geometry(trainer: Any, tp: TrainParams, world_size: int) -> dict[str, Any]:
    """Prompts per step x G and updates per step of the built trainer must be the params'."""
    want = expected_geometry(tp, world_size)
    got = trainer_geometry(trainer.args, world_size)
    if getattr(trainer, "num_generations", got["group_size"]) != got["group_size"]:
        got["group_size"] = trainer.num_generations
    if want != got:
        raise TrainerMismatch(_side_by_side(
            "the trainer's batch geometry is not the params' (a backend changed the config?):",
            want, got, want.keys(),
        ))
    return got


def check_trainable(model: Any, finetune: str) -> dict[str, int]:
    """`lora`: some parameters train and all of them are LoRA weights; `full`: none is LoRA."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    lora = [n for n in names if "lora_" in n]
    if finetune == "lora" and (not lora or len(lora) != len(names)):
        raise TrainerMismatch(
            f"train.finetune is lora, but the trainer's model trains {len(names)} tensors of which "
            f"{len(lora)} are LoRA weights (was peft_config ignored by the trainer?)"
        )
    if finetune == "full" and lora:
        raise TrainerMismatch("train.finetune is full, but the trainer's model has LoRA weights")
    return {"trainable_tensors": len(names), "lora_tensors": len(lora)}


# --------------------------------------------------------------------------------------------
# Effective arguments
# --------------------------------------------------------------------------------------------

#: GRPOConfig fields that define what is trained and how; each must hold the value we passed.
ALGORITHM_KEYS = (
    "per_device_train_batch_size", "gradient_accumulation_steps", "steps_per_generation",
    "num_generations", "num_iterations", "max_steps", "seed",
    "learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay", "max_grad_norm", "optim",
    "beta", "epsilon", "epsilon_high", "loss_type", "scale_rewards", "mask_truncated_completions",
    "max_completion_length", "temperature", "top_p", "top_k",
    "bf16", "fp16", "per_device_eval_batch_size", "num_generations_eval",
    "vllm_importance_sampling_correction",
)


def _norm(key: str, value: Any) -> Any:
    value = getattr(value, "value", value)  # enums (optim, scheduler)
    if key == "top_k" and value in (None, 0, -1):
        return "off"  # TRL says 0 or None, vLLM says -1: all mean no top-k
    return value


def check_effective_args(args: Any, requested: dict[str, Any]) -> None:
    """Stop unless every algorithm setting we passed is the value the trainer holds."""
    keys = [k for k in ALGORITHM_KEYS if k in requested]
    want = {k: _norm(k, requested[k]) for k in keys}
    got = {k: _norm(k, getattr(args, k, None)) for k in keys}
    bad = [k for k in keys if want[k] != got[k]]
    if bad:
        raise TrainerMismatch(_side_by_side(
            f"the trainer changed {len(bad)} setting(s) of the algorithm after build:", want, got, bad
        ))


def _json_safe(value: Any) -> Any:
    import json

    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return str(value)


def trainer_record(trainer: Any, backend: str) -> dict[str, Any]:
    """What was trained: the trainer class, its GRPO base (module + qualname), the MRO and the
    effective `args` (for the run folder's trainer.json)."""
    from ruscarl_lib.train.trainer_class import grpo_base_of
    from ruscarl_lib.train.trl_version import class_name

    cls = type(trainer)
    base = grpo_base_of(cls)
    return {
        "backend": backend,
        "trainer_class": class_name(cls),
        "base_class": class_name(base),
        "base_is_unsloth": is_unsloth_class(base),
        "mro": [class_name(k) for k in cls.__mro__],
        "contract_checked_at_runtime": "first RL step",
        "args": {k: _json_safe(v) for k, v in trainer.args.to_dict().items()},
    }


# --------------------------------------------------------------------------------------------
# Unsloth's silent patch failures
# --------------------------------------------------------------------------------------------

#: Messages with which Unsloth reports that one of its source rewrites did not apply, or that it
#: fell back to TRL's own trainer (e.g. rollouts from the base model with the LoRA ignored).
PATCH_FAILURE_PATTERNS = ("patch may have failed", "training will use trl's own trainer")
_UNSLOTH_LOGGERS = ("unsloth", "unsloth_zoo", "unsloth_zoo.log")


class UnslothPatchFailed(RuntimeError):
    """Unsloth reported a failed patch; the run would train something other than intended."""


class _RaiseOnPatchFailure(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if any(p in message.lower() for p in PATCH_FAILURE_PATTERNS):
            raise UnslothPatchFailed(f"{message} (logger {record.name}); stopping instead of training")


@contextmanager
def unsloth_failures_as_errors() -> Iterator[None]:
    """While active, Unsloth's patch-failure warnings (log records or Python warnings) raise."""
    handler = _RaiseOnPatchFailure(level=logging.WARNING)
    loggers = [logging.getLogger(n) for n in _UNSLOTH_LOGGERS]
    with warnings.catch_warnings():
        for pattern in PATCH_FAILURE_PATTERNS:
            warnings.filterwarnings("error", message=f"(?i).*{pattern}.*")
        for lg in loggers:
            lg.addHandler(handler)
        try:
            yield
        finally:
            for lg in loggers:
                lg.removeHandler(handler)
