"""Run RuscaRL (or the plain rubric-GRPO baseline) from a params file.

`run_training(params)` is what notebooks call; `python -m ruscarl_lib.training --params f.yaml
[--set key=value ...]` is the same function as a script, so one run can also be started with
`accelerate launch` on several processes. The steps:

1. pick the backend (Unsloth must be imported before trl/transformers, so nothing here imports
   them at module level) and load the policy with a LoRA adapter;
2. turn the `train` params into a GRPOConfig, expressed in RL steps (one rollout batch of
   `prompts_per_step` x G samples) rather than TRL's micro-steps;
3. build the `ScaffoldedGRPOTrainer` over the `trl.GRPOTrainer` of that moment (Unsloth's on a
   GPU), check that it is the trainer and algorithm the params ask for (`trainer_checks`),
   record it in trainer.json, and train it, writing metrics.jsonl, the per-rollout table and LoRA
   checkpoints, resuming from the last checkpoint when there is one;
4. save the final adapter, the params and the library versions.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import math
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from .params import Params, TrainParams, load_params, params_from_dict, save_params, set_dotted
from .fingerprint import RunSettingsChanged, write_fingerprint  # noqa: F401 (re-exported)
from .local_models import resolve_model
from .backends import BackendUnavailable
from .paths import resolve_path
from .run_outputs import (
    ADAPTER_DIR,
    CHECKPOINTS_DIR,
    METRICS_FILE,
    PARAMS_FILE,
    ROLLOUTS_DIR,
    RolloutTableWriter,
    metrics_callback,
    write_contract_report,
    write_trainer_record,
    prune_rollouts,
    truncate_metrics,
    write_versions,
)

log = logging.getLogger(__name__)

BACKENDS = ("unsloth", "transformers")


# --------------------------------------------------------------------------------------------
# Backend and model
# --------------------------------------------------------------------------------------------


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_backend(tp: TrainParams) -> str:
    """`auto` means Unsloth when a GPU is present and Unsloth is installed, else transformers."""
    if tp.backend != "auto":
        return tp.backend
    if importlib.util.find_spec("unsloth") is not None and _cuda_available():
        return "unsloth"
    return "transformers"


def prepare_backend(tp: TrainParams) -> str:
    """Resolve the backend and, for Unsloth, import it now: it patches trl and transformers on
    import and must come before them."""
    backend = resolve_backend(tp)
    if backend == "unsloth":
        from .trainer_checks import unsloth_failures_as_errors

        late = [m for m in ("trl", "transformers", "peft") if m in sys.modules]
        if late:
            log.warning("unsloth imported after %s; its patches may not apply fully", late)
        try:
            with unsloth_failures_as_errors():
                import unsloth  # noqa: F401
        except ImportError as err:
            raise BackendUnavailable(
                "backend 'unsloth' needs the GPU extra (pip install -e '.[gpu]', unsloth==2026.10.9); "
                f"import failed: {err}. Use backend: transformers on machines without it."
            ) from err
    return backend


def _torch_dtype(tp: TrainParams):
    import torch

    if tp.dtype != "auto":
        return getattr(torch, tp.dtype)
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def torch_float32():
    import torch

    return torch.float32


def lora_config(tp: TrainParams):
    """The PEFT LoRA config both backends share."""
    from peft import LoraConfig

    return LoraConfig(
        r=tp.lora_r,
        lora_alpha=tp.lora_alpha,
        lora_dropout=tp.lora_dropout,
        target_modules=list(tp.lora_target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


@dataclass
class Policy:
    """A loaded policy: the model, its tokenizer, and the LoRA config TRL still has to apply
    (None when the backend already wrapped the model, as Unsloth does)."""

    model: Any
    tokenizer: Any
    peft_config: Any
    backend: str


def load_policy(tp: TrainParams, *, seed: int, backend: str | None = None) -> Policy:
    """Load `tp.model` through the chosen backend, with the LoRA settings of `tp`."""
    backend = backend or prepare_backend(tp)
    if backend == "unsloth":
        return _load_unsloth(tp, seed)
    if backend == "transformers":
        return _load_transformers(tp)
    raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")


def _load_unsloth(tp: TrainParams, seed: int) -> Policy:
    if tp.finetune != "lora":
        raise BackendUnavailable("train.finetune: full is supported with backend: transformers only")
    try:
        from unsloth import FastLanguageModel
    except ImportError as err:
        raise BackendUnavailable(f"backend 'unsloth' is not installed: {err}") from err
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=resolve_model(tp.model),
        max_seq_length=tp.max_prompt_length + tp.max_scaffold_tokens + tp.max_completion_length,
        # explicit, as for transformers (Unsloth's own default is bf16 even on CPU)
        dtype=_torch_dtype(tp),
        load_in_4bit=tp.load_in_4bit,
        fast_inference=tp.fast_inference,
        max_lora_rank=tp.lora_r,
        gpu_memory_utilization=tp.gpu_memory_utilization,
    )
    model = FastLanguageModel.get_peft_model(
        model,
        r=tp.lora_r,
        lora_alpha=tp.lora_alpha,
        lora_dropout=tp.lora_dropout,
        target_modules=list(tp.lora_target_modules),
        bias="none",
        use_gradient_checkpointing="unsloth" if tp.gradient_checkpointing else False,
        random_state=seed,
    )
    tokenizer.padding_side = "left"
    return Policy(model=model, tokenizer=tokenizer, peft_config=None, backend="unsloth")


def _load_transformers(tp: TrainParams) -> Policy:
    from transformers import AutoModelForCausalLM

    from .tiny_model import load_tokenizer

    kwargs: dict[str, Any] = {"dtype": _torch_dtype(tp)}
    if tp.load_in_4bit:
        if not _cuda_available() or importlib.util.find_spec("bitsandbytes") is None:
            raise BackendUnavailable("load_in_4bit needs a CUDA GPU and bitsandbytes")
        import torch
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    source = resolve_model(tp.model)  # a registered local model's folder, else as given
    model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    if tp.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=tp.gradient_checkpointing
        )
    if kwargs["dtype"] == torch_float32():
        # The marker Unsloth's loader sets for an explicit float32 request: were this model
        # trained by Unsloth's trainer (the forced-Unsloth CPU lane), it keeps float32 instead
        # of switching to fp16 mixed precision. Nothing else reads it.
        model._unsloth_user_float32 = True
    tokenizer = load_tokenizer(source, padding_side="left")
    peft_config = lora_config(tp) if tp.finetune == "lora" else None
    return Policy(model=model, tokenizer=tokenizer, peft_config=peft_config, backend="transformers")


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


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

    return PartialState(cpu=not _cuda_available())


def _world_size() -> int:
    return distributed_state().num_processes


def build_grpo_config(
    params: Params, run_dir: str | Path, *, backend: str = "transformers", world_size: int | None = None
):
    """The GRPOConfig of a run: batch geometry, optimisation, sampling, checkpoints, logging."""
    from trl import GRPOConfig  # resolved now: Unsloth's config class once Unsloth is imported

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
    dtype = _torch_dtype(tp)
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
        mask_truncated_completions=tp.mask_truncated_completions,
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


# --------------------------------------------------------------------------------------------
# Data and rewards
# --------------------------------------------------------------------------------------------


def prompt_length(tokenizer, messages: list[dict]) -> int:
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    return len(ids["input_ids"])


def scaffold_length(tokenizer, example: Any, scaffold: Any = None) -> int:
    """Tokens the full-rubric scaffold adds to `example`'s prompt (rendered with the scaffold
    settings: points shown or not, the no-reveal line): the most any rollout can add."""
    from .scaffold import render_scaffold

    show_points = scaffold.show_points if scaffold is not None else True
    warn = scaffold.warn_no_reveal if scaffold is not None else True
    full = render_scaffold(example.messages, list(example.rubric), show_points=show_points, warn_no_reveal=warn)
    return prompt_length(tokenizer, full) - prompt_length(tokenizer, example.messages)


def build_train_dataset(
    examples: Sequence[Any],
    tokenizer,
    max_prompt_length: int,
    *,
    max_scaffold_tokens: int | None = None,
    scaffold: Any = None,
    overlong_scaffold: str = "drop",
):
    """Training rows for `examples`, without those whose clean prompt is too long, and (with
    `max_scaffold_tokens`) without those whose full-rubric scaffold would add more tokens.

    verl drops overlong prompts too (instead of truncating the conversation): a cut
    conversation would be graded against a rubric written for the whole one. The scaffold
    limit sizes the generation engine's context (prompt + scaffold + completion), so a longer
    scaffold would be cut or overflow there; `overlong_scaffold: error` stops before training
    instead of dropping. The limit applies with scaffolds off as well, so RuscaRL and the
    baseline train on the same rows.
    """
    from .rollouts import to_train_dataset

    kept, dropped = [], []
    for ex in examples:
        (kept if prompt_length(tokenizer, ex.messages) <= max_prompt_length else dropped).append(ex)
    if dropped:
        log.warning(
            "dropped %d of %d examples whose prompt exceeds max_prompt_length=%d (first: %s)",
            len(dropped), len(examples), max_prompt_length, dropped[0].id,
        )
    if max_scaffold_tokens is not None:
        if overlong_scaffold not in ("drop", "error"):
            raise ValueError(f"overlong_scaffold must be 'drop' or 'error', got {overlong_scaffold!r}")
        lengths = [(ex, scaffold_length(tokenizer, ex, scaffold)) for ex in kept]
        over = [(ex, n) for ex, n in lengths if n > max_scaffold_tokens]
        if over and overlong_scaffold == "error":
            worst = max(over, key=lambda x: x[1])
            raise ValueError(
                f"{len(over)} of {len(kept)} examples have a full-rubric scaffold longer than "
                f"train.max_scaffold_tokens={max_scaffold_tokens} (longest: example {worst[0].id!r}, "
                f"{worst[1]} tokens); raise the limit or set train.overlong_scaffold: drop"
            )
        if over:
            log.warning(
                "dropped %d of %d examples whose full-rubric scaffold exceeds max_scaffold_tokens=%d "
                "(first: %s, %d tokens)", len(over), len(kept), max_scaffold_tokens, over[0][0].id, over[0][1],
            )
            kept = [ex for ex, n in lengths if n <= max_scaffold_tokens]
    if not kept:
        raise ValueError("no example fits max_prompt_length and max_scaffold_tokens")
    return to_train_dataset(kept)


def default_reward_funcs(params: Params, servers: contextlib.ExitStack | None = None,
                         log_dir: Path | None = None) -> list[Callable[..., list[float]]]:
    """The rubric reward configured by the `judge` section.

    It grades the `prompts` TRL passes, which the scaffolded trainer keeps clean (the scaffold
    only reaches generation), reads the `rubric` and `example_id` columns, logs judge
    accounting through `log_metric` (into metrics.jsonl) and per-criterion verdicts through
    `log_extra` (into the rollout table). With `judge.server.start` a local vLLM judge is
    started into `servers` (stopped when it closes), logging to `log_dir`.
    """
    from .reward import rubric_reward

    if params.judge.kind == "openai" and params.judge.server.start:
        if servers is None:
            raise ValueError("judge.server.start needs an ExitStack to hold the server")
        from .judges.server import served_judge

        judge_params, server = servers.enter_context(served_judge(params.judge, log_dir or Path(".")))
        reward = rubric_reward(judge_params)
        server.attach(reward.judge)
        return [reward]
    return [rubric_reward(params.judge)]


# --------------------------------------------------------------------------------------------
# Run
# --------------------------------------------------------------------------------------------


@dataclass
class TrainingResult:
    run_dir: Path
    adapter_dir: Path
    metrics_path: Path
    rollouts_dir: Path
    global_step: int
    rl_steps: int
    resumed_from: Path | None
    trainer: Any = field(default=None, repr=False)


def run_dir_of(params: Params) -> Path:
    return resolve_path(params.output.dir) / params.output.run_name


def _last_checkpoint(ckpt_dir: Path) -> Path | None:
    from transformers.trainer_utils import get_last_checkpoint

    if not ckpt_dir.is_dir():
        return None
    last = get_last_checkpoint(str(ckpt_dir))
    return Path(last) if last else None


def _checkpoint_step(checkpoint: Path) -> int:
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return int(state["global_step"])


def _prepare_run_dir(run_dir: Path, tp: TrainParams, per_rl: int, is_main: bool,
                     fingerprint: dict[str, Any] | None = None) -> Path | None:
    """Find the checkpoint to resume from and make the logs agree with it.

    With `train.resume` (the default) a folder whose stored fingerprint differs from
    `fingerprint` is refused (`RunSettingsChanged`, naming the changed keys) before anything in
    it is touched; `train.resume: false` starts the folder afresh.
    """
    if tp.resume and fingerprint is not None:
        from .fingerprint import check_run_folder

        check_run_folder(run_dir, fingerprint, PARAMS_FILE)
    ckpt_dir = run_dir / CHECKPOINTS_DIR
    last = _last_checkpoint(ckpt_dir) if tp.resume else None
    if not is_main:
        return last
    run_dir.mkdir(parents=True, exist_ok=True)
    if last is not None:
        step = _checkpoint_step(last)
        truncate_metrics(run_dir / METRICS_FILE, step)
        prune_rollouts(run_dir, step // per_rl)
        log.info("resuming from %s (optimizer step %d)", last, step)
    else:
        if ckpt_dir.exists() or (run_dir / METRICS_FILE).exists():
            log.warning("starting %s afresh: removing its old checkpoints, metrics, rollouts and adapter", run_dir)
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        shutil.rmtree(run_dir / ADAPTER_DIR, ignore_errors=True)
        shutil.rmtree(run_dir / ROLLOUTS_DIR, ignore_errors=True)
        (run_dir / METRICS_FILE).unlink(missing_ok=True)
    return last


def attach_lora_for(trainer_cls: type, policy: Policy, *, seed: int) -> Policy:
    """Unsloth's rewritten trainer skips TRL's PEFT block (it expects `FastLanguageModel.
    get_peft_model` to have run), so a `peft_config` handed to it is silently ignored and the
    whole model would train. Over such a base, apply the LoRA here, seeded, before the trainer."""
    from .rollouts import grpo_base_of
    from .trainer_checks import is_unsloth_class

    if policy.peft_config is None or not is_unsloth_class(grpo_base_of(trainer_cls)):
        return policy
    from peft import get_peft_model
    from transformers import set_seed

    set_seed(seed)
    model = get_peft_model(policy.model, policy.peft_config)
    return Policy(model=model, tokenizer=policy.tokenizer, peft_config=None, backend=policy.backend)


def check_built_trainer(trainer: Any, params: Params, backend: str, run_dir: Path, *, world_size: int) -> None:
    """Before training: the right base class, the params' geometry and algorithm settings;
    then record the trainer (classes and effective args) in the run folder's trainer.json."""
    from .rollouts import grpo_base_of
    from .trainer_checks import (
        check_base_class,
        check_effective_args,
        check_geometry,
        check_trainable,
        trainer_record,
    )

    check_base_class(grpo_base_of(type(trainer)), backend, gpu=_cuda_available())
    check_geometry(trainer, params.train, world_size)
    check_trainable(trainer.model, params.train.finetune)
    requested = grpo_config_kwargs(params, run_dir, backend=backend, world_size=world_size)
    requested["vllm_importance_sampling_correction"] = False  # forced off by the trainer
    check_effective_args(trainer.args, requested)
    if trainer.accelerator.is_main_process:
        write_trainer_record(run_dir, trainer_record(trainer, backend))


class JudgeFailureStop:
    """Stops training at an RL-step boundary, saving a checkpoint, once a reward's
    `failure_guard` has tripped on any process; `raise_if_stopped` then names the reason."""

    def __init__(self, reward_funcs: Sequence[Any], per_rl: int) -> None:
        self.guards = [g for g in (getattr(f, "failure_guard", None) for f in reward_funcs) if g is not None]
        self.per_rl = per_rl
        self.stopped_at: int | None = None

    def _any_process(self, flag: bool) -> bool:
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return flag
        from accelerate.utils import reduce

        return bool(reduce(torch.tensor([float(flag)], device=distributed_state().device), "sum").item() > 0)

    def callback(self):
        from transformers import TrainerCallback

        stop = self

        class StopOnJudgeFailures(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if not stop.guards or state.global_step % stop.per_rl:
                    return  # (the same reward functions on every process: all return together)
                if stop._any_process(any(g.tripped for g in stop.guards)):
                    stop.stopped_at = state.global_step
                    control.should_save = True
                    control.should_training_stop = True

        return StopOnJudgeFailures()

    def raise_if_stopped(self, run_dir: Path) -> None:
        if self.stopped_at is None:
            return
        from .reward import JudgeFailureError

        reason = next((g.tripped for g in self.guards if g.tripped), "on another process")
        raise JudgeFailureError(
            f"training stopped at RL step {self.stopped_at // self.per_rl}: {reason} The checkpoint "
            f"{run_dir / CHECKPOINTS_DIR / f'checkpoint-{self.stopped_at}'} is kept; rerunning resumes from it."
        )


def run_fingerprint(params: Params, data: Any, policy: Policy | None = None,
                    reward_funcs: Sequence[Any] | None = None) -> dict[str, Any]:
    """What the run folder's fingerprint.json records (see `fingerprint.training_fingerprint`)."""
    from .fingerprint import training_fingerprint

    return training_fingerprint(params, data=data, model=policy.model if policy is not None else None,
                                reward_funcs=reward_funcs)


def run_training(
    params: Params,
    *,
    train_examples: Sequence[Any] | None = None,
    train_dataset: Any = None,
    eval_dataset: Any = None,
    reward_funcs: Sequence[Callable[..., list[float]]] | None = None,
    callbacks: Sequence[Any] = (),
    rollout_sinks: Sequence[Callable[[int, list[dict]], None]] = (),
    policy: Policy | None = None,
    trainer_cls: type | None = None,
) -> TrainingResult:
    """Train with the params' `train`, `scaffold`, `data` and `judge` sections.

    Data: `train_dataset` (rows as built by `rollouts.to_train_dataset`), else
    `train_examples`, else the `data` section. Rewards: `reward_funcs`, else the `judge`
    section. `policy` skips model loading (a model already in memory); `trainer_cls` may name a
    base-less mixin of extra overrides (e.g. `contract.ContractProbeMixin`, which tests use to
    probe the loss inputs), put on the scaffolded trainer once the backend is prepared. With `scaffold.enabled:
    false` this is the plain rubric-GRPO baseline through the same code path.
    """
    tp = params.train
    backend = policy.backend if policy is not None else prepare_backend(tp)
    state = distributed_state()
    run_dir = run_dir_of(params)
    geo = batch_geometry(tp, state.num_processes)
    if train_dataset is None and train_examples is None:
        from .data_io import load_dataset_from_params

        train_examples = load_dataset_from_params(params.data)
    fingerprint = run_fingerprint(params, train_examples if train_dataset is None else train_dataset,
                                  policy, reward_funcs)
    resume_from = _prepare_run_dir(run_dir, tp, geo.optimizer_steps_per_rl_step, state.is_main_process,
                                   fingerprint)
    state.wait_for_everyone()
    if state.is_main_process:
        save_params(params, run_dir / PARAMS_FILE)
        write_versions(run_dir)
        write_fingerprint(run_dir, fingerprint)

    seed = params.seed if tp.seed is None else tp.seed
    if policy is None:
        policy = load_policy(tp, seed=seed, backend=backend)
    if train_dataset is None:
        train_dataset = build_train_dataset(train_examples, policy.tokenizer, tp.max_prompt_length,
                                            max_scaffold_tokens=tp.max_scaffold_tokens, scaffold=params.scaffold,
                                            overlong_scaffold=tp.overlong_scaffold)
    if reward_funcs is None and params.judge.server.start and state.num_processes > 1:
        raise ValueError("judge.server.start would start one judge server per process: start it once with "
                         "`ruscarl judge-server` and set judge.base_urls to its address")
    if params.scaffold.binary_k is not None and params.scaffold.binary_k > tp.group_size:
        raise ValueError(f"scaffold.binary_k={params.scaffold.binary_k} exceeds train.group_size")

    from .rollouts import resolve_trainer_class
    from .trainer_checks import unsloth_failures_as_errors
    from .progress import progress_callback

    config = build_grpo_config(params, run_dir, backend=backend, world_size=state.num_processes)
    sinks = list(rollout_sinks)
    if tp.log_rollouts:
        sinks.insert(0, RolloutTableWriter(run_dir))

    def sink(rl_step: int, records: list[dict]) -> None:
        for s in sinks:
            s(rl_step, records)

    trainer_cls = resolve_trainer_class(trainer_cls)  # over trl.GRPOTrainer as it is now
    policy = attach_lora_for(trainer_cls, policy, seed=seed)
    # `servers` holds a judge server this run starts for itself, if any
    with contextlib.ExitStack() as servers, unsloth_failures_as_errors():
        if reward_funcs is None:
            reward_funcs = default_reward_funcs(params, servers, run_dir)
        judge_stop = JudgeFailureStop(reward_funcs, geo.optimizer_steps_per_rl_step)
        trainer = trainer_cls(
            model=policy.model,
            reward_funcs=list(reward_funcs),
            args=config,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=policy.tokenizer,
            peft_config=policy.peft_config,
            callbacks=[metrics_callback(run_dir / METRICS_FILE, {"run": params.output.run_name}),
                       judge_stop.callback(), progress_callback("rl", geo.optimizer_steps_per_rl_step), *callbacks],
            scaffold=params.scaffold,
            total_steps=tp.max_steps,
            rollout_sink=sink,
            rollout_buckets=tp.rollout_buckets,
        )
        check_built_trainer(trainer, params, backend, run_dir, world_size=state.num_processes)
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    judge_stop.raise_if_stopped(run_dir)

    adapter_dir = run_dir / ADAPTER_DIR
    trainer.save_model(str(adapter_dir))
    if trainer.accelerator.is_main_process:
        policy.tokenizer.save_pretrained(str(adapter_dir))
        if getattr(trainer, "contract_report", None):
            write_contract_report(run_dir, trainer.contract_report)
    state.wait_for_everyone()
    return TrainingResult(
        run_dir=run_dir,
        adapter_dir=adapter_dir,
        metrics_path=run_dir / METRICS_FILE,
        rollouts_dir=run_dir / ROLLOUTS_DIR,
        global_step=trainer.state.global_step,
        rl_steps=math.ceil(trainer.state.global_step / geo.optimizer_steps_per_rl_step),
        resumed_from=resume_from,
        trainer=trainer,
    )


# --------------------------------------------------------------------------------------------
# Script entry point
# --------------------------------------------------------------------------------------------


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """`["train.max_steps=3", "scaffold.enabled=false"]` -> typed dotted overrides (YAML scalars)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set expects key=value, got {pair!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ruscarl_lib.training",
        description="RuscaRL GRPO training (works under `accelerate launch`).",
    )
    parser.add_argument("--params", required=False, help="params YAML file (default: schema defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--fresh", action="store_true",
                        help="start the run folder afresh (train.resume=false) instead of resuming; "
                             "needed when its settings changed")
    args = parser.parse_args(argv)
    overrides = parse_overrides(args.overrides)
    if args.fresh:
        overrides["train.resume"] = False
    if args.params:
        params = load_params(args.params, overrides)
    else:
        raw: dict[str, Any] = {}
        for k, v in overrides.items():
            set_dotted(raw, k, v)
        params = params_from_dict(raw, source="--set")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = run_training(params)
    if result.trainer is None or result.trainer.accelerator.is_main_process:
        print(json.dumps({"run_dir": str(result.run_dir), "adapter": str(result.adapter_dir),
                          "global_step": result.global_step, "rl_steps": result.rl_steps}))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
