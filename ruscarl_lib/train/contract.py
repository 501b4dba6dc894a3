"""Checking RuscaRL's central contract on a real run: the loss never sees the scaffold.

Two checks share the row extraction below:
- `RuntimeContract`: every run's first RL step, checked live by the trainer itself on any
  backend: the prompt ids handed to the loss and every log-prob row (old, reference, current)
  must be the clean prompt's (the scaffolded one under the `in_loss` ablation), and every
  rollout must reach the loss. A violation raises and stops training.
- `ContractProbeMixin` + `check_contract`: the whole-run offline proof. The probe keeps a copy of
  what generation was given and of every (prompt, completion) row a log-prob computation was
  given; `check_contract` proves, rollout by rollout, that generation saw the scaffolded prompt
  and every log-prob row used the clean one. The CPU tests and the GPU smoke script use it. It
  keeps every token id of the run in memory: meant for short checks, not for real training.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch


class ContractViolation(AssertionError):
    """A log-prob computation or a generation got a prompt it must not get."""


Row = tuple[tuple[int, ...], tuple[int, ...]]


def logp_rows(input_ids, attention_mask, logits_to_keep: int) -> list[Row]:
    """(prompt ids, completion ids) of every row of a log-prob computation, padding removed.

    The last `logits_to_keep` columns are the completion, whatever padding (left padding, or
    Unsloth's left-packing) sits before them; the attention mask tells real tokens apart.
    """
    width = input_ids.size(1) - logits_to_keep
    rows = []
    for ids, mask in zip(input_ids.detach().cpu(), attention_mask.detach().cpu()):
        prompt = tuple(ids[:width][mask[:width] == 1].tolist())
        completion = tuple(ids[width:][mask[width:] == 1].tolist())
        rows.append((prompt, completion))
    return rows


class RuntimeContract:
    """The live check of one RL step (the trainer runs it on the first step of every run).

    `expect` is fed by the rollout hook with the clean and rollout prompt ids it tokenized
    itself, so a subclass or a backend that swaps the ids afterwards is caught: by
    `check_handover` (the batch TRL, or Unsloth's rewrite, passes on to the loss) and by
    `observe` (each log-prob computation). Rows are matched by prompt, and by completion where
    the completion survives masking (`mask_truncated_completions` blanks some).
    """

    def __init__(self, in_loss: bool) -> None:
        self.in_loss = in_loss
        self.allowed: set[tuple[int, ...]] = set()
        self.forbidden: set[tuple[int, ...]] = set()
        self.by_completion: dict[tuple[int, ...], set[tuple[int, ...]]] = {}
        self.rollouts = self.scaffolded = self.loss_rows = self.old_ref_rows = self.handed_over = 0

    def expect(self, clean_ids, rollout_ids, completion_ids) -> None:
        for clean, rolled, completion in zip(clean_ids, rollout_ids, completion_ids):
            clean, rolled = tuple(clean), tuple(rolled)
            want, other = (rolled, clean) if self.in_loss else (clean, rolled)
            self.allowed.add(want)
            if other != want:
                self.forbidden.add(other)
                self.scaffolded += 1
            self.by_completion.setdefault(tuple(completion), set()).add(want)
            self.rollouts += 1

    def _which(self) -> str:
        return "scaffolded (in_loss)" if self.in_loss else "clean"

    def _check_prompt(self, prompt: tuple[int, ...], what: str) -> None:
        if prompt not in self.allowed:
            kind = "the scaffolded prompt" if prompt in self.forbidden else "a prompt of no rollout"
            raise ContractViolation(
                f"clean-prompt contract violated on the first RL step: {what} got {kind} "
                f"({len(prompt)} tokens) instead of the {self._which()} one; training stopped"
            )

    def check_handover(self, prompt_ids, prompt_mask) -> None:
        """The prompt ids of the batch handed to the loss (read when the backend provides them)."""
        if prompt_ids is None or prompt_mask is None:
            return
        for ids, mask in zip(prompt_ids.detach().cpu(), prompt_mask.detach().cpu()):
            self._check_prompt(tuple(ids[mask == 1].tolist()), "the batch handed to the loss")
            self.handed_over += 1

    def observe(self, input_ids, attention_mask, logits_to_keep: int, *, grad: bool) -> None:
        what = "a loss row" if grad else "an old/reference log-prob row"
        for prompt, completion in logp_rows(input_ids, attention_mask, logits_to_keep):
            self._check_prompt(prompt, what)
            wants = self.by_completion.get(completion) if completion else None
            if wants is not None and prompt not in wants:
                raise ContractViolation(
                    f"clean-prompt contract violated on the first RL step: {what} pairs a "
                    "completion with another rollout's prompt; training stopped"
                )
            if grad:
                self.loss_rows += 1
            else:
                self.old_ref_rows += 1

    def finish(self) -> dict[str, Any]:
        """Every rollout must have reached the loss; returns what was checked."""
        if self.rollouts and self.loss_rows < self.rollouts:
            raise ContractViolation(
                f"first RL step: {self.rollouts} rollouts but only {self.loss_rows} loss rows "
                "were seen; the loss did not go through the checked log-prob path"
            )
        return {
            "rollouts": self.rollouts, "scaffolded": self.scaffolded, "loss_rows": self.loss_rows,
            "old_ref_rows": self.old_ref_rows, "handed_over": self.handed_over,
            "prompt": self._which(),
        }


class ContractProbeMixin:
    """Records generation inputs/outputs and the rows of every log-prob computation.

    Put it on a scaffolded trainer with `train.trainer_class.scaffolded_trainer_class(extra=...)`, or pass
    it as `trainer_cls` to `train.run.run_training` (which does that after the backend is ready).
    """

    _ruscarl_wrapper = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.gen_calls: list[dict[str, Any]] = []
        self.logp_calls: list[dict[str, Any]] = []
        self.rounds: list[dict[str, Any]] = []
        super().__init__(*args, **kwargs)

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, **kwargs):
        completion_ids, logprobs = super()._generate_single_turn(
            prompt_ids, images, multimodal_fields, num_generations, **kwargs
        )
        self.gen_calls.append(
            {
                "training": self.training_rollout(),
                "prompt_ids": [tuple(p) for p in prompt_ids],
                "completion_ids": [tuple(c) for c in completion_ids],
            }
        )
        return completion_ids, logprobs

    def _generate_unpadded(self, prompt_ids, scaffolded):
        # A rollout round is one generate call (its prefill possibly packed or in length buckets):
        # record it in row order (what the contract checks) with how its prefill ran, after
        # checking that the call's (prompt, completion) pairs are exactly the round's.
        before = len(self.gen_calls)
        self.last_prefill = None
        completion_ids = super()._generate_unpadded(prompt_ids, scaffolded)
        inner = self.gen_calls[before:]
        merged = {
            "training": self.model.training,
            "prompt_ids": [tuple(p) for p in prompt_ids],
            "completion_ids": [tuple(c) for c in completion_ids],
            "batch_sizes": [len(c["prompt_ids"]) for c in inner],
            "prefill_mode": self.last_prefill.mode if self.last_prefill else "padded",
            "prefill_buckets": list(self.last_prefill.bucket_sizes) if self.last_prefill else [],
        }
        pairs = Counter(pc for c in inner for pc in zip(c["prompt_ids"], c["completion_ids"]))
        if pairs != Counter(zip(merged["prompt_ids"], merged["completion_ids"])):
            raise ContractViolation("generation attached completions to prompts they were not generated from")
        self.gen_calls[before:] = [merged]
        return completion_ids

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        rows = logp_rows(input_ids, attention_mask, logits_to_keep)
        self.logp_calls.append(
            {"training": self.training_rollout(), "grad": torch.is_grad_enabled(), "rows": rows}
        )
        return super()._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
        )

    def _scaffolded_rollout(self, prompts):
        out = super()._scaffolded_rollout(prompts)
        if self.training_rollout():
            self.rounds.append(
                {
                    "clean_prompts": [list(p) for p in prompts],
                    "plans": list(self._plans or []),
                    "loss_prompt_ids": [tuple(p) for p in out["prompt_ids"]],
                    "completion_ids": [tuple(c) for c in out["completion_ids"]],
                }
            )
        return out


@dataclass
class ContractReport:
    rounds: int
    rollouts: int
    scaffolded: int
    loss_rows: int  # rows of log-prob computations with gradient (the loss itself)
    old_ref_rows: int  # rows computed without gradient (old and reference log-probs)
    eval_prompts: int
    in_loss: bool

    def summary(self) -> str:
        prompt = "scaffolded (in_loss ablation)" if self.in_loss else "clean"
        return (
            f"contract OK: {self.rollouts} rollouts in {self.rounds} RL steps ({self.scaffolded} "
            f"scaffolded); {self.loss_rows} loss rows and {self.old_ref_rows} old/ref rows all on "
            f"the {prompt} prompt; {self.eval_prompts} evaluation prompts"
        )


def _chat_ids(tokenizer, messages) -> tuple[int, ...]:
    enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    return tuple(enc["input_ids"])


def check_contract(trainer) -> ContractReport:
    """Raise ContractViolation unless every recorded rollout and log-prob row obeys the contract."""
    tok = trainer.processing_class
    in_loss = trainer.scaffold_params.in_loss
    train_gen = [c for c in trainer.gen_calls if c["training"]]
    if len(train_gen) != len(trainer.rounds):
        raise ContractViolation(f"{len(train_gen)} training generations for {len(trainer.rounds)} rollout rounds")
    expected: Counter = Counter()
    forbidden: set = set()
    n_roll = n_scaf = 0
    for rnd, gen in zip(trainer.rounds, train_gen):
        for clean_msgs, plan, loss_ids, gen_ids, completion in zip(
            rnd["clean_prompts"], rnd["plans"], rnd["loss_prompt_ids"], gen["prompt_ids"], gen["completion_ids"]
        ):
            n_roll += 1
            clean = _chat_ids(tok, clean_msgs)
            if gen_ids != _chat_ids(tok, plan.messages):
                raise ContractViolation(f"generation of {plan.example_id} did not use its rollout prompt")
            if plan.shown:
                n_scaf += 1
                if gen_ids == clean:
                    raise ContractViolation(f"scaffold of {plan.example_id} did not reach generation")
            elif gen_ids != clean:
                raise ContractViolation(f"unscaffolded rollout of {plan.example_id} changed the prompt")
            want = gen_ids if in_loss else clean
            if loss_ids != want:
                raise ContractViolation(f"rollout of {plan.example_id} handed the loss the wrong prompt ids")
            expected[(want, completion)] += 1
            other = clean if in_loss else gen_ids
            if other != want:
                forbidden.add((other, completion))
    with_grad = without_grad = 0
    seen: Counter = Counter()
    for call in trainer.logp_calls:
        if not call["training"]:
            continue
        for pair in call["rows"]:
            if pair in forbidden or pair not in expected:
                raise ContractViolation("a log-prob row used a prompt the loss must not see")
            if call["grad"]:
                with_grad += 1
                seen[pair] += 1
            else:
                without_grad += 1
    missing = [p for p in expected if seen[p] == 0]
    if missing:
        raise ContractViolation(f"{len(missing)} rollouts never reached the loss")
    eval_prompts = 0
    for call in trainer.gen_calls:
        if call["training"]:
            continue
        eval_prompts += len(call["prompt_ids"])
    return ContractReport(len(trainer.rounds), n_roll, n_scaf, with_grad, without_grad, eval_prompts, in_loss)


def check_eval_unscaffolded(trainer, eval_rows: list[dict[str, Any]]) -> int:
    """Every evaluation generation prompt must be the clean prompt of an evaluation row."""
    tok = trainer.processing_class
    clean = {_chat_ids(tok, r["prompt"]) for r in eval_rows}
    n = 0
    for call in trainer.gen_calls:
        if call["training"]:
            continue
        for ids in call["prompt_ids"]:
            if ids not in clean:
                raise ContractViolation("an evaluation rollout was generated from a modified prompt")
            n += 1
    return n
