"""The `train` params as a GRPOConfig, in RL steps (one rollout batch of `prompts_per_step` x G
samples) rather than TRL's micro-steps, the same for both backends.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruscarl_lib.params import (
    Params,
    TrainParams,
)
from ruscarl_lib.train.run_folder import (
    CHECKPOINTS_DIR,
)

log = logging.getLogger(__name__)


def cuda_available() -> bool:
    """Whether a CUDA GPU is visible (torch imported only when asked)."""
    import torch

    return torch.cuda.is_available()


def torch_dtype_of(tp: TrainParams):
    """The torch dtype `train.dtype` names (`auto`: bf16 where the GPU has it, else fp16 or fp32)."""
    import torch

    if tp.dtype != "auto":
        return getattr(torch, tp.dtype)
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


@dataclass(frozen=True)
class BatchGeometry:
    """How one RL step maps onto TRL's micro-steps on `world_size` processes."""

    world_size: int
    completions_per_step: int
    gradient_accumulation_steps: int
    steps_per_generation: int
    optimizer_steps_per_rl_step: int


def batch_geometry(tp: TrainParams, world_size: int) -> BatchGeometry:
    """Check that an RL step splits into whole groups, updates, processes and micro-batches."""
    completions = tp.prompts_per_step * tp.group_size
    per_update, rem = divmod(completions, tp.updates_per_step)
    if rem:
        raise ValueError(
            f"prompts_per_step x group_size = {completions} completions do not split into "
            f"updates_per_step={tp.updates_per_step} equal updates"
        )
    per_process, rem = divmod(per_update, world_size)
    if rem:
        raise ValueError(
            f"{per_update} completions per update do not split over {world_size} processes"
        )
    ga, rem = divmod(per_process, tp.per_device_batch_size)
    if rem or ga == 0:
        raise ValueError(
            f"{per_process} completions per process and update are not a multiple of "
            f"per_device_batch_size={tp.per_device_batch_size}"
        )
    return BatchGeometry(
        world_size=world_size,
        completions_per_step=completions,
        gradient_accumulation_steps=ga,
        steps_per_generation=ga * tp.updates_per_step,
        optimizer_steps_per_rl_step=tp.updates_per_step * tp.num_iterations,
    )


def distributed_state():
    """Accelerate's process state, created as TrainingArguments will create it.

    PartialState is a singleton: created without `cpu=True` on a machine without CUDA it
    reports a single process even under torchrun, and the trainer would then size batches for
    the wrong world.
    """
    from accelerate import PartialState

    return PartialState(cpu=not cuda_available())


def _world_size() -> int:
    return distributed_state().num_processes


def build_grpo_config(
    params: Params, run_dir: str | Path, *, backend: str = "transformers", world_size: int | None = None
):
    """The GRPOConfig of a run: batch geometry, optimisation, sampling, checkpoints, logging."""
    from trl import (
        GRPOConfig,  # resolved now: Unsloth's config class once Unsloth is imported
    )

    return GRPOConfig(**grpo_config_kwargs(params, run_dir, backend=backend, world_size=world_size))


def grpo_config_kwargs(
    params: Params, run_dir: str | Path, *, backend: str = "transformers", world_size: int | None = None
) -> dict[str, Any]:
    """Every GRPOConfig argument of a run, explicit wherever Unsloth's config has its own default
    (epsilon_high, optim, eval batch size, precision), so both backends train one algorithm."""
    import torch

    tp = params.train
    geo = batch_geometry(tp, world_size or _world_size())
    per_rl = geo.optimizer_steps_per_rl_step
    cuda = torch.cuda.is_available()
    dtype = torch_dtype_of(tp)
    use_vllm = tp.use_vllm or (backend == "unsloth" and tp.fast_inference)
    eval_gens = tp.num_generations_eval or tp.group_size
    kwargs: dict[str, Any] = dict(
        output_dir=str(Path(run_dir) / CHECKPOINTS_DIR),
        # batch geometry
        per_device_train_batch_size=tp.per_device_batch_size,
        gradient_accumulation_steps=geo.gradient_accumulation_steps,
        steps_per_generation=geo.steps_per_generation,
        num_generations=tp.group_size,
        num_iterations=tp.num_iterations,
        shuffle_dataset=tp.shuffle,
        # optimisation
        learning_rate=tp.learning_rate,
        lr_scheduler_type=tp.lr_scheduler,
        warmup_steps=tp.warmup_ratio,
        weight_decay=tp.weight_decay,
        max_grad_norm=tp.max_grad_norm,
        beta=tp.kl_coef,
        epsilon=tp.epsilon,
        # TRL reads None as `epsilon`; Unsloth's config would turn None into 0.28 under dapo
        epsilon_high=tp.epsilon if tp.epsilon_high is None else tp.epsilon_high,
        optim=tp.optim,
        loss_type=tp.loss_type,
        scale_rewards=tp.scale_rewards,
        # `truncated_mask: positive` masks after the advantages are known (train.rollouts)
        mask_truncated_completions=tp.mask_truncated_completions and not tp.masks_cut_gains_only,
        # sampling
        max_completion_length=tp.max_completion_length,
        temperature=tp.temperature,
        top_p=tp.top_p,
        top_k=tp.top_k,
        use_vllm=use_vllm,
        vllm_mode=tp.vllm_mode,
        vllm_server_base_url=tp.vllm_server_base_url,
        vllm_gpu_memory_utilization=tp.gpu_memory_utilization,
        vllm_max_model_length=tp.max_prompt_length + tp.max_scaffold_tokens + tp.max_completion_length,
        vllm_importance_sampling_correction=False,
        # precision and device
        bf16=cuda and dtype == torch.bfloat16,
        fp16=cuda and dtype == torch.float16,
        use_cpu=not cuda,
        gradient_checkpointing=tp.gradient_checkpointing,
        # length, checkpoints, logging (RL steps -> optimizer steps)
        max_steps=tp.max_steps * per_rl,
        save_strategy="steps",
        save_steps=tp.save_steps * per_rl,
        save_total_limit=tp.save_total_limit,
        logging_steps=tp.logging_steps,
        # evaluation groups: explicit (Unsloth's default eval batch size is 4, TRL's 8)
        num_generations_eval=eval_gens,
        per_device_eval_batch_size=eval_gens,
        report_to=[] if tp.report_to == "none" else [tp.report_to],
        seed=params.seed if tp.seed is None else tp.seed,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        log_completions=False,
    )
    if tp.eval_steps:
        kwargs.update(eval_strategy="steps", eval_steps=tp.eval_steps * per_rl)
    return kwargs
