"""Scaffolded rollouts inside TRL's GRPOTrainer (METHOD.md sections 4 and 5).

RuscaRL changes only how training rollouts are *generated*: sample i of a group is generated
from a prompt carrying part of the rubric (the scaffold), while every log-probability the
loss uses (old, reference, current) is computed on the clean prompt. TRL 1.15's `rollout_func`
hook gives exactly that split: the trainer generates nothing itself and uses the prompt ids the
hook returns for the loss. The hook here generates with TRL's own `_generate_single_turn`
(HF generate, vLLM colocate/server, or Unsloth's patched path), one sample per scaffolded
prompt, and hands back the clean prompt's ids.

Rows reach the hook through a thin override of `_generate_and_score_completions`, because
`rollout_func` only receives the prompts. TRL's `RepeatSampler` delivers each prompt as G
consecutive copies and the processes' local batches concatenate (in process order) into the
global batch that rewards are grouped over, so the group position of local row i is
`(process_index * n_local + i) % G`. That is checked on every batch.

With scaffolds disabled every ratio is 0, no criterion is shown, generation and loss see the
same clean prompt, and the trainer is plain rubric GRPO through the same code path. The
overrides live in a base-less mixin and stay thin wrappers around `super()`, so they sit on
top of Unsloth's rewritten methods as well as TRL's (see `train.trainer_class`). Every rollout
is also handed to the rollout sinks; `train.run_folder.RolloutTableWriter` writes the rollout table.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
from accelerate.utils import gather_object

from ruscarl_lib.params import ScaffoldParams
from ruscarl_lib.scaffold.render import scaffold_example
from ruscarl_lib.scaffold.schedule import ScaffoldSchedule
from ruscarl_lib.train.contract import RuntimeContract
from ruscarl_lib.train.prefill import (
    PREFILL_MODES,
    packed_prefill_blocked_by,
    packed_prefill_unavailable,
    unpadded_prefill,
)
from ruscarl_lib.train.dataset import (
    ID_COLUMN,
    PROMPT_COLUMN,
    RUBRIC_COLUMN,
    row_to_example,
)
from ruscarl_lib.train.sampler import epoch_seeded_sampler_class, is_epoch_seeded
from ruscarl_lib.train.trl_compat import (
    install_logprob_fallback,
    keep_vllm_cpu_weights_reloadable,
)
from ruscarl_lib.train.checks import is_unsloth_class
from ruscarl_lib.train.trl_version import check_trl_support

# Fields the rollout hook adds to every row (TRL forwards them to reward functions as kwargs).
RATIO_FIELD = "scaffold_ratio"
SHOWN_FIELD = "scaffold_shown"
POSITION_FIELD = "group_position"
STEP_FIELD = "rl_step"


@dataclass
class RolloutPlan:
    """What one training rollout was generated from."""

    rl_step: int
    example_id: str
    group: int  # global index of the group within this RL step
    group_position: int  # position within the group (0 .. G-1)
    ratio: float
    shown: list[int]
    messages: list[dict]


RolloutSink = Callable[[int, list[dict[str, Any]]], None]


def _scaffold_rollout_func(prompts: list, trainer: "ScaffoldedGRPOMixin") -> dict[str, Any]:
    return trainer._scaffolded_rollout(prompts)


class ScaffoldedGRPOMixin:
    """The overrides that make a GRPOTrainer generate training rollouts from scaffolded prompts.

    Not a trainer by itself: `scaffolded_trainer_class()` puts it on top of the GRPOTrainer in
    use. Extra constructor arguments:
      scaffold: the `scaffold` params section (schedule, rendering, seed, `in_loss` ablation).
      total_steps: RL steps of the run (the schedule's horizon); default from `args.max_steps`.
      rollout_sink: called on the main process once per RL step with the step number and the
        records of every rollout of that step (all processes gathered).
      rollout_prefill, rollout_buckets: how the HF-generate prefill of a scaffolded rollout batch
        avoids padding (`train.rollout_prefill`: packed, buckets or padded; `train.rollout_buckets`).
      mask_truncated_gains: leave out of the loss only the answers cut at the length cap whose
        advantage is positive (`train.truncated_mask: positive`; pass GRPOConfig's own
        `mask_truncated_completions=False` with it).
      kl_log_ratio_cap: cap c on log(ref/policy) inside TRL's k3 KL term (`train.kl_log_ratio_cap`).
    Evaluation rollouts are never scaffolded. The first RL step of every run is checked live
    against the clean-prompt contract (`train.contract.RuntimeContract`); a violation stops training.
    """

    _ruscarl_wrapper = True  # its signatures are ours; the API check looks past them

    def __init__(
        self,
        *args: Any,
        scaffold: ScaffoldParams | None = None,
        total_steps: int | None = None,
        rollout_sink: RolloutSink | None = None,
        rollout_prefill: str = "packed",
        rollout_buckets: int = 4,
        mask_truncated_gains: bool = False,
        kl_log_ratio_cap: float | None = None,
        **kwargs: Any,
    ) -> None:
        check_trl_support(type(self))
        if kl_log_ratio_cap is not None and is_unsloth_class(type(self)):
            raise ValueError("train.kl_log_ratio_cap acts on TRL's loss; Unsloth's rewritten trainer computes "
                             "its own KL term, which the cap would silently miss")
        install_logprob_fallback()
        if kwargs.get("rollout_func") is not None:
            raise ValueError("ScaffoldedGRPOTrainer provides its own rollout_func")
        if kwargs.get("environment_factory") is not None or kwargs.get("tools"):
            raise ValueError("scaffolded rollouts do not support tools or environments")
        config = kwargs.get("args") if "args" in kwargs else (args[2] if len(args) > 2 else None)
        if config is None:
            raise ValueError("pass a GRPOConfig as `args`")
        # The sampling log-probs of a scaffolded rollout are conditioned on the scaffolded
        # prompt; the loss works on the clean prompt. vLLM importance-sampling correction would
        # read their difference as engine mismatch and clip or mask exactly the scaffolded
        # samples, undoing the method (the paper's "correct IS" variant loses 11.6 points).
        # The baseline keeps it off too, so the two arms differ only in the scaffold flag.
        if config.vllm_importance_sampling_correction and config.use_vllm:
            warnings.warn(
                "vllm_importance_sampling_correction is forced off for RuscaRL runs", stacklevel=2
            )
        config.vllm_importance_sampling_correction = False
        if config.use_vllm and config.vllm_mode == "colocate" and not torch.cuda.is_available():
            keep_vllm_cpu_weights_reloadable()  # must precede the engine TRL builds below
        self.scaffold_params = scaffold or ScaffoldParams()
        self.schedule = ScaffoldSchedule.from_params(self.scaffold_params)
        self.rollout_sink = rollout_sink
        if rollout_prefill not in PREFILL_MODES:
            raise ValueError(f"rollout_prefill {rollout_prefill!r}: expected one of {PREFILL_MODES}")
        self.rollout_prefill = rollout_prefill
        unavailable = packed_prefill_unavailable() if rollout_prefill == "packed" else None
        if unavailable:
            warnings.warn(f"train.rollout_prefill: packed falls back to padded generate calls here: {unavailable}",
                          stacklevel=2)
        self.rollout_buckets = int(rollout_buckets)
        self.last_prefill = None  # the PrefillRecord of the last rollout generate call
        if mask_truncated_gains and config.mask_truncated_completions:
            raise ValueError("mask_truncated_gains replaces TRL's mask_truncated_completions; "
                             "pass the GRPOConfig with it off")
        self.mask_truncated_gains = bool(mask_truncated_gains)
        self.kl_log_ratio_cap = None if kl_log_ratio_cap is None else float(kl_log_ratio_cap)
        self._loss_inputs: dict[str, Any] | None = None  # the batch whose KL is being capped
        self._rows: list[dict[str, Any]] | None = None
        self._plans: list[RolloutPlan] | None = None
        self._capture: dict[str, Any] | None = None
        self._round_training = False
        self._contract: RuntimeContract | None = None
        self.contract_report: dict[str, Any] | None = None  # the first RL step's live check

        ga = config.gradient_accumulation_steps
        spg = config.steps_per_generation
        per_round = spg * config.num_iterations
        if per_round % ga:
            raise ValueError(
                f"steps_per_generation x num_iterations ({spg} x {config.num_iterations}) must be a "
                f"multiple of gradient_accumulation_steps ({ga}) so that every RL step starts on an "
                "optimizer step"
            )
        self.updates_per_rl_step = per_round // ga
        if total_steps is None:
            if config.max_steps <= 0:
                raise ValueError("set total_steps or a positive args.max_steps (the schedule horizon)")
            total_steps = math.ceil(config.max_steps / self.updates_per_rl_step)
        self.total_rl_steps = int(total_steps)

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*rollout_func.*experimental.*")
            super().__init__(*args, rollout_func=_scaffold_rollout_func, **kwargs)
        if rollout_prefill == "packed" and not unavailable and not (
                self.use_vllm or self.use_transformers_continuous_batching or is_unsloth_class(type(self))):
            reason = packed_prefill_blocked_by(self._unwrapped_model())
            if reason:
                warnings.warn(f"train.rollout_prefill: packed cannot run on this model ({reason}); scaffolded "
                              "batches get one padded generate call each. Load the model through "
                              "train.backend.load_policy, or call models.attention.use_cpu_sdpa(model), or "
                              "set rollout_prefill: padded to say so", stacklevel=2)

    # -- bookkeeping ---------------------------------------------------------------------------

    def rl_step_at(self, global_step: int) -> int:
        """1-based RL step that a rollout generated at optimizer step `global_step` belongs to."""
        return global_step // self.updates_per_rl_step + 1

    def _get_train_sampler(self, dataset=None):
        sampler = super()._get_train_sampler(dataset)
        if not is_epoch_seeded(sampler):
            sampler.__class__ = epoch_seeded_sampler_class(type(sampler))
        return sampler

    def _log_completion_extra(self, column: str, values: list) -> None:
        super()._log_completion_extra(column, values)
        if self._capture is not None:
            self._capture["extra"].setdefault(column, []).extend(values)

    # -- generation ----------------------------------------------------------------------------

    def training_rollout(self) -> bool:
        """Whether the current work belongs to training (not evaluation). Inside a generation
        round it is the model's mode when the round began: a backend may switch the model to
        inference mode for generation (Unsloth's `for_inference`) and back afterwards."""
        if self._rows is not None:
            return self._round_training
        return bool(self.model.training)

    def _generate_and_score_completions(self, inputs):
        training = bool(self.model.training)
        self._round_training = training
        if training:
            self._contract_next_step()
        self._rows = inputs
        self._plans = None
        self._capture = {"extra": {}} if training else None
        try:
            output = super()._generate_and_score_completions(inputs)
            if self.mask_truncated_gains:
                self._mask_truncated_gains(output)
            if training:
                if self._contract is not None:
                    # what TRL (or Unsloth's rewrite) hands the loss; fields read if present
                    self._contract.check_handover(output.get("prompt_ids"), output.get("prompt_mask"))
                self._record(output)
        finally:
            self._rows = None
            self._plans = None
            self._capture = None
        return output

    def _mask_truncated_gains(self, output: dict[str, Any]) -> None:
        """Drop from the loss the answers cut at the cap that would be reinforced.

        TRL's `mask_truncated_completions` drops every cut answer, whatever its advantage. Once a
        degenerate answer (a word repeated to the cap) spreads through a group, the whole group is
        cut and nothing pushes it back, however a criterion prices it: the cap is absorbing. Here
        a cut answer is never reinforced (its text is unfinished), but one scoring below its group
        keeps its negative advantage in the loss. Applied after the advantages are known, so the
        reference and old log-probabilities were computed over the whole answer.
        """
        mask, ids, adv = output["completion_mask"], output["completion_ids"], output["advantages"]
        lengths = mask.sum(dim=1)
        last = ids.gather(1, (lengths - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
        eos = getattr(self, "eos_token_ids", None) or [self.processing_class.eos_token_id]
        pad = getattr(self.processing_class, "pad_token_id", None)
        stop = torch.tensor([t for t in [*eos, pad] if t is not None], device=ids.device)
        truncated = (lengths > 0) & ~torch.isin(last, stop)
        gain = (adv > 0) if adv.dim() == 1 else (adv > 0).any(dim=1)
        drop = truncated & gain
        removed = (mask * drop.unsqueeze(1)).sum()
        output["completion_mask"] = mask * (~drop).unsqueeze(1).to(mask.dtype)
        output["num_items_in_batch"] = output["num_items_in_batch"] - self.accelerator.gather(removed).sum()
        metrics = getattr(self, "_metrics", None)
        if metrics is not None:
            mode = "train" if self.model.training else "eval"
            n = self.accelerator.gather(torch.stack([truncated.sum(), drop.sum()]).reshape(1, 2)).sum(dim=0)
            total = max(int(self.accelerator.gather(torch.tensor([len(lengths)], device=ids.device)).sum()), 1)
            metrics[mode]["completions/truncated_in_loss_ratio"].append(float(n[0] - n[1]) / total)

    def _plan(self, rows: list[dict[str, Any]]) -> list[RolloutPlan]:
        """Scaffold ratio, shown criteria and rollout prompt for every local row."""
        G = self.num_generations
        offset = self.accelerator.process_index * len(rows)
        self._check_groups([str(r[ID_COLUMN]) for r in rows], offset)
        step = self.rl_step_at(self.state.global_step)
        sp = self.scaffold_params
        plans = []
        examples: dict[str, Any] = {}  # the rows of a group are copies of one example: convert it once
        for i, row in enumerate(rows):
            key = str(row[ID_COLUMN])
            example = examples.get(key)
            if example is None:
                example = examples[key] = row_to_example(row)
            position = (offset + i) % G
            ratio = self.schedule.ratio(position, G, step, self.total_rl_steps)
            scaffolded = scaffold_example(
                example,
                ratio,
                seed=sp.seed,
                step=step,
                group_position=position,
                show_points=sp.show_points,
                warn_no_reveal=sp.warn_no_reveal,
            )
            plans.append(
                RolloutPlan(
                    rl_step=step,
                    example_id=example.id,
                    group=(offset + i) // G,
                    group_position=position,
                    ratio=float(ratio),
                    shown=list(scaffolded.shown),
                    messages=scaffolded.messages,
                )
            )
        return plans

    def _check_groups(self, local_ids: list[str], offset: int) -> None:
        """Every global group of G consecutive rows must be G copies of one example."""
        all_ids = gather_object(local_ids)
        G = self.num_generations
        if len(all_ids) % G:
            raise RuntimeError(f"generation batch of {len(all_ids)} rows is not a multiple of G={G}")
        for start in range(0, len(all_ids), G):
            if len(set(all_ids[start : start + G])) != 1:
                raise RuntimeError(
                    f"rows {start}..{start + G - 1} of the generation batch are not G copies of one "
                    f"example ({all_ids[start:start + G]}); group positions would be wrong"
                )

    def _scaffolded_rollout(self, prompts: list) -> dict[str, Any]:
        """The rollout_func: generate from scaffolded prompts, return the clean prompt ids."""
        if not self.training_rollout():
            # Evaluation: the clean prompt, TRL's own grouping (never scaffolded).
            ids, images, mm = self._tokenize_prompts(prompts)
            completion_ids, logprobs = self._generate_single_turn(
                ids, images, mm, self.num_generations_eval
            )
            return {"prompt_ids": ids, "completion_ids": completion_ids, "logprobs": logprobs}

        rows = self._rows
        if rows is None or len(rows) != len(prompts):
            raise RuntimeError("rollout hook called without the rows of the current batch")
        if not isinstance(prompts[0], list):
            raise ValueError("scaffolded rollouts need conversational prompts (lists of messages)")
        plans = self._plan(rows)
        self._plans = plans
        clean_ids, rollout_ids = self._tokenize_rollout_prompts(prompts, plans)
        # One generation per prompt: rollout prompts of a group differ, so vLLM server mode must
        # not deduplicate them (it keeps every num_generations-th prompt).
        completion_ids = self._generate_unpadded(rollout_ids, any(p.shown for p in plans))
        loss_ids = rollout_ids if self.scaffold_params.in_loss else clean_ids
        if self._contract is not None:
            self._contract.expect(clean_ids, rollout_ids, completion_ids)
        if self._capture is not None:
            self._capture["rollout_prompt_len"] = [len(x) for x in rollout_ids]
            self._capture["clean_prompt_len"] = [len(x) for x in clean_ids]
        self._log_scaffold_metrics(plans, rollout_ids, clean_ids)
        return {
            "prompt_ids": [list(x) for x in loss_ids],
            "completion_ids": completion_ids,
            # Sampling log-probs are left out: they belong to the scaffolded prompt, and TRL
            # features that read them (IS correction, off-policy masking) would mistake the
            # scaffold for policy drift.
            "logprobs": None,
            RATIO_FIELD: [p.ratio for p in plans],
            SHOWN_FIELD: [p.shown for p in plans],
            POSITION_FIELD: [p.group_position for p in plans],
            STEP_FIELD: [p.rl_step for p in plans],
        }

    def _tokenize_rollout_prompts(self, prompts: list, plans: list[RolloutPlan]) -> tuple[list, list]:
        """Token ids of the clean prompts and of the rollout prompts, from one tokenizer call.

        A rollout prompt that is its clean prompt (nothing shown) reuses the clean ids instead
        of being tokenized again; the others are tokenized in the same call as the clean ones
        (each call has a fixed cost that shows in a small model's step time). Tokens do not
        depend on the batch: TRL tokenizes without padding, and tools and environments, which
        would render each row with its own schema, are refused at construction.
        """
        scaffolded = [i for i, (prompt, plan) in enumerate(zip(prompts, plans)) if plan.messages != prompt]
        ids, images, _ = self._tokenize_prompts(list(prompts) + [plans[i].messages for i in scaffolded])
        if images is not None:
            raise ValueError("scaffolded rollouts support text-only prompts")
        clean_ids, rollout_ids = ids[: len(prompts)], list(ids[: len(prompts)])
        for i, rolled in zip(scaffolded, ids[len(prompts):]):
            rollout_ids[i] = rolled
        return clean_ids, rollout_ids

    def _generate_unpadded(self, prompt_ids: list, scaffolded: bool) -> list[list[int]]:
        """Completion ids of one sample per prompt, in the order of `prompt_ids`.

        HF generate left-pads a batch to its longest prompt, and sample 0 of every group carries
        the whole rubric, so a single call makes every row pay for the longest scaffold. Under
        `rollout_prefill` packed or buckets the batch's prefill skips the padding
        (`prefill.unpadded_prefill`) and all rows are then decoded together, in one generate
        call: rows, group positions, scaffold seeds, the rollout table and the sampling RNG
        stream are those of a single call, and sampled tokens differ from it only where the
        prefill's floating-point sums move a logit. One plain call as before when nothing is
        scaffolded (the baseline stays stock TRL), with vLLM or continuous batching (no padding
        there), on Unsloth's rewritten trainer (its own generation path), and under ZeRO-3/FSDP
        (every process must run the same number of forward passes). `last_prefill` records
        what the last call did.
        """
        mode = getattr(self, "rollout_prefill", "packed")
        sharded = self.is_fsdp_enabled or (
            self.is_deepspeed_enabled and getattr(self.accelerator.state.deepspeed_plugin, "zero_stage", 0) == 3
        )
        if (mode == "padded" or not scaffolded or self.use_vllm or self.use_transformers_continuous_batching
                or sharded or is_unsloth_class(type(self))):
            return self._generate_single_turn(prompt_ids, None, {}, 1)[0]
        with unpadded_prefill(self._unwrapped_model(), mode,
                              int(getattr(self, "rollout_buckets", 4))) as record:
            completions = self._generate_single_turn(prompt_ids, None, {}, 1)[0]
        self.last_prefill = record
        return completions

    def _unwrapped_model(self):
        """`accelerator.unwrap_model(model_wrapped)`, looked up once per wrapped model: it walks the
        wrappers on every call, a cost that shows on every step of a small model."""
        cached = getattr(self, "_unwrapped_cache", None)
        if cached is None or cached[0] is not self.model_wrapped:
            cached = (self.model_wrapped, self.accelerator.unwrap_model(self.model_wrapped))
            self._unwrapped_cache = cached
        return cached[1]

    def _log_scaffold_metrics(self, plans, rollout_ids, clean_ids) -> None:
        device = self.accelerator.device
        local = torch.tensor(
            [
                [p.ratio, len(p.shown), float(bool(p.shown)), len(r), len(c)]
                for p, r, c in zip(plans, rollout_ids, clean_ids)
            ],
            dtype=torch.float32,
            device=device,
        )
        mean = self.accelerator.gather(local).mean(dim=0).tolist()
        metrics = self._metrics["train"]
        metrics["scaffold/ratio_mean"].append(mean[0])
        metrics["scaffold/criteria_shown_mean"].append(mean[1])
        metrics["scaffold/frac_scaffolded"].append(mean[2])
        metrics["scaffold/rollout_prompt_length"].append(mean[3])
        metrics["scaffold/clean_prompt_length"].append(mean[4])

    # -- run-time contract (first RL step) --------------------------------------------------------

    def _contract_next_step(self) -> None:
        """A training generation starts: open the live check on the first RL step of the run,
        close it (every rollout must have reached the loss) when the second one starts."""
        if self._contract is None and self.contract_report is None:
            self._contract = RuntimeContract(in_loss=self.scaffold_params.in_loss)
        elif self._contract is not None:
            self._finish_contract()

    def _finish_contract(self) -> None:
        if self._contract is not None:
            contract, self._contract = self._contract, None
            self.contract_report = contract.finish()

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        if self._contract is not None and self.training_rollout():
            self._contract.observe(input_ids, attention_mask, logits_to_keep, grad=torch.is_grad_enabled())
        out = super()._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
        )
        if self._loss_inputs is not None:  # the policy's log-probs of the loss (its only call here)
            inputs, self._loss_inputs = self._loss_inputs, None
            self._cap_kl_log_ratio(inputs, out[0])
        return out

    # -- the KL term -------------------------------------------------------------------------------

    def _compute_loss(self, model, inputs):
        if self.kl_log_ratio_cap is None or inputs.get("ref_per_token_logps") is None:
            return super()._compute_loss(model, inputs)
        capped = dict(inputs)  # the batch may be reused (num_iterations > 1): its ref log-probs stay
        self._loss_inputs = capped
        try:
            return super()._compute_loss(model, capped)
        finally:
            self._loss_inputs = None

    def _cap_kl_log_ratio(self, inputs: dict[str, Any], per_token_logps: torch.Tensor) -> None:
        """Bound TRL's k3 term, exp(d) - d - 1 with d = log(ref/policy), where d exceeds the cap c.

        The loss is computed on the clean prompt while rollouts were sampled from the scaffolded
        one, so a hinted token the clean policy finds unlikely but the reference likes has a large
        d, and k3 and its gradient grow as e^d (measured: 1e9 on the sandbox). Replacing the
        reference log-prob by min(ref, policy.detach() + c) keeps k3 exact up to c; beyond it the
        value is k3(c) and the gradient that of k3 at d = c, so it still pulls towards the
        reference, at most e^c - 1 per token. Called with the loss's log-probs, before TRL reads
        the reference ones.
        """
        ref = inputs["ref_per_token_logps"]
        limit = per_token_logps.detach() + self.kl_log_ratio_cap
        inputs["ref_per_token_logps"] = torch.minimum(ref, limit)
        metrics = getattr(self, "_metrics", None)
        if metrics is not None:
            mask = inputs["completion_mask"].bool()
            hit = ((ref > limit) & mask).sum()
            count = self.accelerator.gather(torch.stack([hit, mask.sum()]).reshape(1, 2)).sum(dim=0)
            mode = "train" if self.model.training else "eval"
            metrics[mode]["kl/capped_token_ratio"].append(float(count[0]) / max(float(count[1]), 1.0))

    def train(self, *args, **kwargs):
        output = super().train(*args, **kwargs)
        self._finish_contract()
        return output

    # -- rewards and records ---------------------------------------------------------------------

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        if self._capture is not None:
            n = len(prompts)
            start = self.accelerator.process_index * n
            self._capture["completions"] = completions
            self._capture["completion_lengths"] = [len(c) for c in completion_ids_list]
            self._capture["rewards_per_func"] = rewards_per_func[start : start + n].detach().cpu()
        return rewards_per_func

    def _record(self, output: dict[str, Any]) -> None:
        """Per-rollout records of this RL step, gathered to the main process and handed on."""
        plans, rows, cap = self._plans, self._rows, self._capture
        if plans is None or cap is None or "rewards_per_func" not in cap:
            return
        rpf = cap["rewards_per_func"]
        weights = self.reward_weights.to(rpf.device)
        advantages = output["advantages"].detach().cpu().tolist()
        records = []
        for i, (plan, row) in enumerate(zip(plans, rows)):
            per_func = rpf[i]
            reward = float("nan") if torch.isnan(per_func).all() else float((per_func * weights).nansum())
            completion = cap["completions"][i]
            if isinstance(completion, list):  # conversational: [{"role": "assistant", ...}]
                completion = "".join(str(m.get("content", "")) for m in completion)
            rec = {
                "rl_step": plan.rl_step,
                "global_step": int(self.state.global_step),
                "example_id": plan.example_id,
                "group": plan.group,
                "group_position": plan.group_position,
                "scaffold_ratio": plan.ratio,
                "n_criteria": len(row[RUBRIC_COLUMN]),
                "n_shown": len(plan.shown),
                "shown": list(plan.shown),
                "prompt": json.dumps(row[PROMPT_COLUMN], ensure_ascii=False),
                "rollout_prompt": json.dumps(plan.messages, ensure_ascii=False) if plan.shown else None,
                "clean_prompt_tokens": cap["clean_prompt_len"][i],
                "rollout_prompt_tokens": cap["rollout_prompt_len"][i],
                "completion": completion,
                "completion_tokens": cap["completion_lengths"][i],
                "reward": reward,
                "advantage": float(advantages[i]),
            }
            for name, value in zip(self.reward_func_names, per_func.tolist()):
                rec[f"reward/{name}"] = value
            for column, values in cap["extra"].items():
                if i < len(values):
                    rec[column if column not in rec else f"extra/{column}"] = values[i]
            records.append(rec)
        gathered = gather_object(records)
        if self.rollout_sink is not None and self.accelerator.is_main_process:
            self.rollout_sink(plans[0].rl_step, gathered)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.model.training and self.state.global_step > 0:
            logs["rl_step"] = self.rl_step_at(self.state.global_step - 1)
        super().log(logs, start_time)
