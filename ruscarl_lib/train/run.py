"""Run RuscaRL (or the plain rubric-GRPO baseline) from a params file.

`run_training(params)` is what notebooks call; `python -m ruscarl_lib.train.run --params f.yaml
[--set key=value ...]` is the same function as a script, so one run can also be started with
`accelerate launch` on several processes. The steps:

1. pick the backend and load the policy (`train.backend`);
2. turn the `train` params into a GRPOConfig (`train.config`);
3. build the scaffolded trainer over the `trl.GRPOTrainer` of that moment (Unsloth's on a GPU,
   `train.trainer_class`), check that it is the trainer and algorithm the params ask for
   (`train.checks`), record it in trainer.json, and train it, writing metrics.jsonl, the
   per-rollout table and checkpoints, resuming from the last checkpoint when the run folder's
   fingerprint matches;
4. save the final adapter, the params and the library versions.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from ruscarl_lib.common.fingerprint import write_fingerprint
from ruscarl_lib.common.paths import resolve_path
from ruscarl_lib.params import (
    Params,
    TrainParams,
    load_params,
    params_from_dict,
    save_params,
    set_dotted,
)
from ruscarl_lib.train.backend import (
    Policy,
    load_policy,
    prepare_backend,
)
from ruscarl_lib.train.config import (
    BatchGeometry,
    batch_geometry,
    build_grpo_config,
    cuda_available,
    distributed_state,
    grpo_config_kwargs,
)
from ruscarl_lib.train.dataset import build_train_dataset
from ruscarl_lib.train.reward import default_reward_funcs, with_length_penalty
from ruscarl_lib.train.run_folder import (
    ADAPTER_DIR,
    CHECKPOINTS_DIR,
    METRICS_FILE,
    MODEL_DIR,
    PARAMS_FILE,
    ROLLOUTS_DIR,
    RolloutTableWriter,
    final_weights_dir,
    metrics_callback,
    prune_rollouts,
    truncate_metrics,
    write_contract_report,
    write_trainer_record,
    write_versions,
)

log = logging.getLogger(__name__)


@dataclass
class TrainingResult:
    run_dir: Path
    weights_dir: Path  # adapter/ (LoRA) or model/ (full fine-tuning)
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
        from ruscarl_lib.common.fingerprint import check_run_folder

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
            log.warning("starting %s afresh: removing its old checkpoints, metrics, rollouts and weights", run_dir)
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        shutil.rmtree(run_dir / ADAPTER_DIR, ignore_errors=True)
        shutil.rmtree(run_dir / MODEL_DIR, ignore_errors=True)
        shutil.rmtree(run_dir / ROLLOUTS_DIR, ignore_errors=True)
        (run_dir / METRICS_FILE).unlink(missing_ok=True)
    return last


def attach_lora_for(trainer_cls: type, policy: Policy, *, seed: int) -> Policy:
    """Unsloth's rewritten trainer skips TRL's PEFT block (it expects `FastLanguageModel.
    get_peft_model` to have run), so a `peft_config` handed to it is silently ignored and the
    whole model would train. Over such a base, apply the LoRA here, seeded, before the trainer."""
    from ruscarl_lib.train.checks import is_unsloth_class
    from ruscarl_lib.train.trainer_class import grpo_base_of

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
    from ruscarl_lib.train.checks import (
        check_base_class,
        check_effective_args,
        check_geometry,
        check_trainable,
        trainer_record,
    )
    from ruscarl_lib.train.trainer_class import grpo_base_of

    check_base_class(grpo_base_of(type(trainer)), backend, gpu=cuda_available())
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
        from ruscarl_lib.train.reward import JudgeFailureError

        reason = next((g.tripped for g in self.guards if g.tripped), "on another process")
        raise JudgeFailureError(
            f"training stopped at RL step {self.stopped_at // self.per_rl}: {reason} The checkpoint "
            f"{run_dir / CHECKPOINTS_DIR / f'checkpoint-{self.stopped_at}'} is kept; rerunning resumes from it."
        )


def run_fingerprint(params: Params, data: Any, policy: Policy | None = None,
                    reward_funcs: Sequence[Any] | None = None) -> dict[str, Any]:
    """What the run folder's fingerprint.json records (see `fingerprint.training_fingerprint`)."""
    from ruscarl_lib.common.fingerprint import training_fingerprint

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

    Data: `train_dataset` (rows as built by `train.dataset.to_train_dataset`), else
    `train_examples`, else the `data` section. Rewards: `reward_funcs`, else the `judge`
    section. `policy` skips model loading (a model already in memory); `trainer_cls` may name a
    base-less mixin of extra overrides (e.g. `train.contract.ContractProbeMixin`, which tests use to
    probe the loss inputs), put on the scaffolded trainer once the backend is prepared. With `scaffold.enabled:
    false` this is the plain rubric-GRPO baseline through the same code path.
    """
    tp = params.train
    backend = policy.backend if policy is not None else prepare_backend(tp)
    state = distributed_state()
    _check_settings(params, reward_funcs, state.num_processes)
    run_dir = run_dir_of(params)
    geo = batch_geometry(tp, state.num_processes)
    if train_dataset is None and train_examples is None:
        from ruscarl_lib.data.read import load_dataset_from_params

        train_examples = load_dataset_from_params(params.data)
    data = train_examples if train_dataset is None else train_dataset
    resume_from = _open_run_folder(params, run_dir, state, geo, run_fingerprint(params, data, policy, reward_funcs))

    seed = params.seed if tp.seed is None else tp.seed
    if policy is None:
        policy = load_policy(tp, seed=seed, backend=backend)
    if train_dataset is None:
        train_dataset = build_train_dataset(train_examples, policy.tokenizer, tp.max_prompt_length,
                                            max_scaffold_tokens=tp.max_scaffold_tokens, scaffold=params.scaffold,
                                            overlong_scaffold=tp.overlong_scaffold)

    from ruscarl_lib.train.checks import unsloth_failures_as_errors
    from ruscarl_lib.train.trainer_class import resolve_trainer_class

    trainer_cls = resolve_trainer_class(trainer_cls)  # over trl.GRPOTrainer as it is now
    policy = attach_lora_for(trainer_cls, policy, seed=seed)
    # `servers` holds a judge server this run starts for itself, if any
    with contextlib.ExitStack() as servers, unsloth_failures_as_errors():
        if reward_funcs is None:
            reward_funcs = default_reward_funcs(params, servers, run_dir)
        reward_funcs = with_length_penalty(reward_funcs, tp)
        judge_stop = JudgeFailureStop(reward_funcs, geo.optimizer_steps_per_rl_step)
        trainer = _build_trainer(
            trainer_cls, params, backend, run_dir, state, geo, policy, reward_funcs, train_dataset,
            eval_dataset, callbacks=[judge_stop.callback(), *callbacks], rollout_sinks=rollout_sinks,
        )
        check_built_trainer(trainer, params, backend, run_dir, world_size=state.num_processes)
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    judge_stop.raise_if_stopped(run_dir)
    weights_dir = _save_final(trainer, policy, final_weights_dir(run_dir, params.train.finetune), run_dir, state)
    return TrainingResult(
        run_dir=run_dir,
        weights_dir=weights_dir,
        metrics_path=run_dir / METRICS_FILE,
        rollouts_dir=run_dir / ROLLOUTS_DIR,
        global_step=trainer.state.global_step,
        rl_steps=math.ceil(trainer.state.global_step / geo.optimizer_steps_per_rl_step),
        resumed_from=resume_from,
        trainer=trainer,
    )


def _check_settings(params: Params, reward_funcs: Sequence[Any] | None, num_processes: int) -> None:
    """Settings that cannot work together, refused before the run folder is touched."""
    if reward_funcs is None and params.judge.server.start and num_processes > 1:
        raise ValueError("judge.server.start would start one judge server per process: start it once with "
                         "`ruscarl judge-server` and set judge.base_urls to its address")
    if params.scaffold.binary_k is not None and params.scaffold.binary_k > params.train.group_size:
        raise ValueError(f"scaffold.binary_k={params.scaffold.binary_k} exceeds train.group_size")


def _open_run_folder(params: Params, run_dir: Path, state: Any, geo: BatchGeometry,
                     fingerprint: dict[str, Any]) -> Path | None:
    """Check the folder against the run's fingerprint, record params, versions and fingerprint,
    and return the checkpoint to resume from (None: a fresh start)."""
    resume_from = _prepare_run_dir(run_dir, params.train, geo.optimizer_steps_per_rl_step,
                                   state.is_main_process, fingerprint)
    state.wait_for_everyone()
    if state.is_main_process:
        save_params(params, run_dir / PARAMS_FILE)
        write_versions(run_dir)
        write_fingerprint(run_dir, fingerprint)
    return resume_from


def _build_trainer(trainer_cls: type, params: Params, backend: str, run_dir: Path, state: Any,
                   geo: BatchGeometry, policy: Policy, reward_funcs: Sequence[Any], train_dataset: Any,
                   eval_dataset: Any, *, callbacks: Sequence[Any], rollout_sinks: Sequence[Callable]) -> Any:
    """The scaffolded trainer, logging metrics.jsonl, progress lines and the rollout table."""
    from ruscarl_lib.common.progress import progress_callback

    tp = params.train
    sinks = list(rollout_sinks)
    if tp.log_rollouts:
        sinks.insert(0, RolloutTableWriter(run_dir))

    def sink(rl_step: int, records: list[dict]) -> None:
        for s in sinks:
            s(rl_step, records)

    return trainer_cls(
        model=policy.model,
        reward_funcs=list(reward_funcs),
        args=build_grpo_config(params, run_dir, backend=backend, world_size=state.num_processes),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=policy.tokenizer,
        peft_config=policy.peft_config,
        callbacks=[metrics_callback(run_dir / METRICS_FILE, {"run": params.output.run_name}),
                   progress_callback("rl", geo.optimizer_steps_per_rl_step), *callbacks],
        scaffold=params.scaffold,
        total_steps=tp.max_steps,
        rollout_sink=sink,
        rollout_prefill=tp.rollout_prefill,
        rollout_buckets=tp.rollout_buckets,
        mask_truncated_gains=tp.masks_cut_gains_only,
        kl_log_ratio_cap=tp.kl_log_ratio_cap,
    )


def _save_final(trainer: Any, policy: Policy, weights_dir: Path, run_dir: Path, state: Any) -> Path:
    """Save the trained weights (LoRA adapter, or the full model under `finetune: full`) with the
    tokenizer, and the clean-prompt contract report when the trainer probed it."""
    trainer.save_model(str(weights_dir))
    if trainer.accelerator.is_main_process:
        policy.tokenizer.save_pretrained(str(weights_dir))
        if getattr(trainer, "contract_report", None):
            write_contract_report(run_dir, trainer.contract_report)
    state.wait_for_everyone()
    return weights_dir


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
        prog="python -m ruscarl_lib.train.run",
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
        print(json.dumps({"run_dir": str(result.run_dir), "weights": str(result.weights_dir),
                          "global_step": result.global_step, "rl_steps": result.rl_steps}))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
