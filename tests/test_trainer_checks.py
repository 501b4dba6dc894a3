"""Start-up and run-time checks of the trainer actually used (issue: the GPU path made safe).

- the trainer class is built at run time over the current `trl.GRPOTrainer`, and its private
  API is checked on that class, past `(*args, **kwargs)` wrappers such as Unsloth's;
- a built trainer whose geometry or algorithm settings differ from the params stops the run;
- the clean-prompt contract is checked live on the first RL step: a trainer that hands the
  scaffolded ids to the loss is stopped;
- Unsloth's "patch may have failed" warnings raise; the run folder records the trainer.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

import pytest
import torch

from ruscarl_lib.models.tiny import save_tiny_model
from ruscarl_lib.train.smoke_task import keyword_reward, make_examples, toy_params
from ruscarl_lib.train.config import build_grpo_config
from ruscarl_lib.train.run import run_training

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


# --------------------------------------------------------------------------------------------
# The class actually used and its private API
# --------------------------------------------------------------------------------------------


def _wrapping(base: type, name: str = "Wrapped") -> type:
    """A subclass that wraps what Unsloth wraps with `(*args, **kwargs)` (no functools.wraps)."""

    def __init__(self, *args, **kwargs):
        base.__init__(self, *args, **kwargs)

    def _generate_and_score_completions(self, *args, **kwargs):
        return base._generate_and_score_completions(self, *args, **kwargs)

    def train(self, *args, **kwargs):
        return base.train(self, *args, **kwargs)

    return type(name, (base,), {"__init__": __init__, "train": train,
                                "_generate_and_score_completions": _generate_and_score_completions})


def test_private_api_check_walks_past_wrappers():
    from trl import GRPOTrainer

    from ruscarl_lib.train.trl_version import check_trl_support, real_signature
    from ruscarl_lib.train.trainer_class import scaffolded_trainer_class

    wrapped = _wrapping(GRPOTrainer)
    owner, params = real_signature(wrapped, "__init__")
    assert owner is GRPOTrainer and "rollout_func" in params
    check_trl_support(wrapped)
    cls = scaffolded_trainer_class(wrapped)
    assert cls.__mro__[2] is wrapped and cls is scaffolded_trainer_class(wrapped)  # cached
    check_trl_support(cls)  # our own overrides are looked past too


def test_private_api_check_fails_for_a_wrongly_based_class():
    from trl import GRPOTrainer

    from ruscarl_lib.train.trl_version import TRLVersionError
    from ruscarl_lib.train.trainer_class import scaffolded_trainer_class

    class RenamedArgs(GRPOTrainer):  # a TRL release that renamed a private method's parameters
        def _generate_single_turn(self, prompts, images, fields, n):
            raise AssertionError("never called")

    with pytest.raises(TRLVersionError, match=r"RenamedArgs\._generate_single_turn takes"):
        scaffolded_trainer_class(RenamedArgs)
    # the same behind Unsloth-style wrappers: the walk reaches the wrong signature
    with pytest.raises(TRLVersionError, match="_generate_single_turn"):
        scaffolded_trainer_class(_wrapping(RenamedArgs, "WrappedRenamed"))

    class NoRolloutFunc(GRPOTrainer):
        def __init__(self, model, reward_funcs, args=None):
            raise AssertionError("never called")

    with pytest.raises(TRLVersionError, match="rollout_func"):
        scaffolded_trainer_class(_wrapping(NoRolloutFunc, "WrappedNoRollout"))

    class OnlyWrappers(GRPOTrainer):
        pass

    def passthrough(self, *a, **k):
        raise AssertionError("never called")

    # a member that exists only as a (*args, **kwargs) wrapper cannot be checked: refuse it
    OnlyWrappers._tokenize_prompts = passthrough
    real = GRPOTrainer._tokenize_prompts
    try:
        del GRPOTrainer._tokenize_prompts
        with pytest.raises(TRLVersionError, match="only defined through"):
            scaffolded_trainer_class(OnlyWrappers)
    finally:
        GRPOTrainer._tokenize_prompts = real


def test_trainer_class_is_resolved_at_call_time(monkeypatch):
    import trl

    import ruscarl_lib.train.trainer_class as trainer_class
    from ruscarl_lib.train.trainer_class import grpo_base_of, resolve_trainer_class

    stock = trl.GRPOTrainer
    before = trainer_class.ScaffoldedGRPOTrainer
    assert grpo_base_of(before) is stock
    patched = _wrapping(stock, "UnslothGRPOTrainer")  # what `import unsloth` does on a GPU
    monkeypatch.setattr(trl, "GRPOTrainer", patched)
    after = trainer_class.ScaffoldedGRPOTrainer
    assert grpo_base_of(after) is patched
    from ruscarl_lib.train.contract import ContractProbeMixin
    from ruscarl_lib.train.trainer_class import ContractProbe

    assert grpo_base_of(ContractProbe) is patched
    assert grpo_base_of(resolve_trainer_class(ContractProbeMixin)) is patched
    with pytest.raises(TypeError, match="was built on"):
        resolve_trainer_class(before)  # a class made before the rebinding is refused


def test_base_class_must_be_unsloths_on_a_gpu():
    from trl import GRPOTrainer

    from ruscarl_lib.train.checks import TrainerMismatch, check_base_class

    with pytest.raises(TrainerMismatch, match="not on Unsloth's"):
        check_base_class(GRPOTrainer, "unsloth", gpu=True)
    check_base_class(GRPOTrainer, "unsloth", gpu=False)  # CPU: Unsloth does not patch TRL
    check_base_class(GRPOTrainer, "transformers", gpu=True)
    check_base_class(_wrapping(GRPOTrainer, "UnslothGRPOTrainer"), "unsloth", gpu=True)


# --------------------------------------------------------------------------------------------
# Same algorithm on both backends: explicit settings, geometry and effective args
# --------------------------------------------------------------------------------------------


def test_config_sets_what_unsloth_would_default(tmp_path, model_dir):
    params = toy_params(model_dir, tmp_path, "cfg", loss_type="dapo")
    cfg = build_grpo_config(params, tmp_path, world_size=1)
    assert cfg.epsilon_high == params.train.epsilon == 0.2  # not Unsloth's 0.28
    assert str(getattr(cfg.optim, "value", cfg.optim)) == params.train.optim
    assert cfg.per_device_eval_batch_size == cfg.num_generations_eval == params.train.group_size
    assert cfg.bf16 is False and cfg.fp16 is False  # CPU float32, as the transformers model


def test_geometry_check_side_by_side():
    from types import SimpleNamespace

    from ruscarl_lib.params import TrainParams
    from ruscarl_lib.train.checks import TrainerMismatch, check_geometry

    tp = TrainParams(group_size=4, prompts_per_step=2, per_device_batch_size=2, updates_per_step=2)
    args = SimpleNamespace(per_device_train_batch_size=2, gradient_accumulation_steps=2,
                           steps_per_generation=4, num_generations=4)
    trainer = SimpleNamespace(args=args, num_generations=4)
    assert check_geometry(trainer, tp, 1)["prompts_per_step"] == 2
    args.per_device_train_batch_size = 4  # what Unsloth's config does to fit num_generations
    with pytest.raises(TrainerMismatch) as err:
        check_geometry(trainer, tp, 1)
    text = str(err.value)
    assert "params" in text and "trainer" in text
    assert "prompts_per_step" in text and "<-- differs" in text


class _ChangesBatchAfterBuild:
    """Stands in for a backend whose config rewrites the batch size (as Unsloth's can)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.args.per_device_train_batch_size *= 2


class _ChangesEpsilonHigh:
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.args.epsilon_high = 0.28  # Unsloth's DAPO default


def test_run_stops_when_the_built_trainer_has_another_geometry(model_dir, tmp_path):
    from ruscarl_lib.train.checks import TrainerMismatch

    params = toy_params(model_dir, tmp_path, "geo", max_steps=1)
    with pytest.raises(TrainerMismatch, match="batch geometry") as err:
        run_training(params, train_examples=make_examples(4), reward_funcs=[keyword_reward],
                     trainer_cls=_ChangesBatchAfterBuild)
    assert "per_device_train_batch_size" in str(err.value)
    assert not (tmp_path / "geo" / "metrics.jsonl").exists()  # stopped before any step


def test_run_stops_when_the_built_trainer_changed_the_algorithm(model_dir, tmp_path):
    from ruscarl_lib.train.checks import TrainerMismatch

    params = toy_params(model_dir, tmp_path, "eps", max_steps=1)
    with pytest.raises(TrainerMismatch, match="epsilon_high"):
        run_training(params, train_examples=make_examples(4), reward_funcs=[keyword_reward],
                     trainer_cls=_ChangesEpsilonHigh)


class _TrainsTheWholeModel:
    """What Unsloth's trainer does with a `peft_config` it ignores: every weight trains."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for p in self.model.parameters():
            p.requires_grad_(True)


def test_run_stops_when_a_lora_run_would_train_the_whole_model(model_dir, tmp_path):
    from ruscarl_lib.train.checks import TrainerMismatch

    params = toy_params(model_dir, tmp_path, "full", max_steps=1)
    with pytest.raises(TrainerMismatch, match="LoRA weights"):
        run_training(params, train_examples=make_examples(4), reward_funcs=[keyword_reward],
                     trainer_cls=_TrainsTheWholeModel)


def test_lora_is_attached_before_a_trainer_that_ignores_peft_config(model_dir):
    """Over Unsloth's class, run_training applies the LoRA itself (seeded, reproducible)."""
    from trl import GRPOTrainer

    from ruscarl_lib.train.trainer_class import scaffolded_trainer_class
    from ruscarl_lib.train.run import attach_lora_for
    from ruscarl_lib.train.backend import load_policy

    tp = toy_params(model_dir, model_dir.parent, "x").train
    stock_cls = scaffolded_trainer_class()
    policy = load_policy(tp, seed=0, backend="transformers")
    assert attach_lora_for(stock_cls, policy, seed=0) is policy  # TRL applies peft_config itself
    unsloth_like = scaffolded_trainer_class(_wrapping(GRPOTrainer, "UnslothGRPOTrainer"))
    a = attach_lora_for(unsloth_like, policy, seed=0)
    b = attach_lora_for(unsloth_like, load_policy(tp, seed=0, backend="transformers"), seed=0)
    assert a.peft_config is None and hasattr(a.model, "peft_config")
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert any("lora_" in k for k in sa) and all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------------------------
# Run-time contract and the run folder's record
# --------------------------------------------------------------------------------------------


def test_good_run_records_trainer_and_passes_the_live_contract(model_dir, tmp_path):
    params = toy_params(model_dir, tmp_path, "ok", max_steps=2, kl_coef=0.05)
    result = run_training(params, train_examples=make_examples(4), reward_funcs=[keyword_reward])
    rep = result.trainer.contract_report
    assert rep["rollouts"] == 8 and rep["scaffolded"] > 0 and rep["prompt"] == "clean"
    assert rep["loss_rows"] >= 8 and rep["old_ref_rows"] >= 8 and rep["handed_over"] == 8
    assert json.loads((result.run_dir / "contract.json").read_text()) == json.loads(json.dumps(rep, default=str))
    record = json.loads((result.run_dir / "trainer.json").read_text())
    assert record["base_class"] == "trl.trainer.grpo_trainer.GRPOTrainer"
    assert record["trainer_class"] == "ruscarl_lib.train.trainer_class.ScaffoldedGRPOTrainer"
    assert record["base_is_unsloth"] is False
    assert record["args"]["epsilon_high"] == 0.2 and record["args"]["beta"] == 0.05
    assert record["args"]["num_generations"] == 4


class _FeedsScaffoldToLoss:
    """A broken trainer: hands the loss the scaffolded prompt ids instead of the clean ones."""

    def _scaffolded_rollout(self, prompts):
        out = super()._scaffolded_rollout(prompts)
        if self.model.training:
            rolled, _, _ = self._tokenize_prompts([p.messages for p in self._plans])
            out["prompt_ids"] = [list(x) for x in rolled]
        return out


def test_live_contract_stops_a_trainer_that_feeds_scaffolds_to_the_loss(model_dir, tmp_path):
    from ruscarl_lib.train.contract import ContractViolation

    params = toy_params(model_dir, tmp_path, "bad", max_steps=2)
    with pytest.raises(ContractViolation, match="scaffolded prompt"):
        run_training(params, train_examples=make_examples(4), reward_funcs=[keyword_reward],
                     trainer_cls=_FeedsScaffoldToLoss)
    assert not (tmp_path / "bad" / "metrics.jsonl").exists()  # no optimizer step was taken


def test_runtime_contract_rows():
    """The log-prob-level check: a scaffolded loss row, a swapped pairing, a loss that never ran."""
    from ruscarl_lib.train.contract import ContractViolation, RuntimeContract

    clean, scaf, comp = [1, 2], [9, 1, 2], [5, 6]
    c = RuntimeContract(in_loss=False)
    c.expect([clean], [scaf], [comp])

    def batch(prompt, completion, width=4):
        pad = width - len(prompt)
        ids = torch.tensor([[0] * pad + prompt + completion])
        mask = torch.tensor([[0] * pad + [1] * (len(prompt) + len(completion))])
        return ids, mask, len(completion)

    c.observe(*batch(clean, comp), grad=False)
    with pytest.raises(ContractViolation, match="did not go through"):
        c.finish()
    c.observe(*batch(clean, comp), grad=True)
    assert c.finish()["loss_rows"] == 1
    with pytest.raises(ContractViolation, match="a loss row got the scaffolded prompt"):
        c.observe(*batch(scaf, comp), grad=True)
    c2 = RuntimeContract(in_loss=False)
    c2.expect([clean, [3]], [scaf, [3]], [comp, [7]])
    with pytest.raises(ContractViolation, match="another rollout's prompt"):
        c2.observe(*batch([3], comp), grad=True)
    c3 = RuntimeContract(in_loss=True)  # the ablation: the scaffolded prompt is the right one
    c3.expect([clean], [scaf], [comp])
    c3.observe(*batch(scaf, comp), grad=True)
    with pytest.raises(ContractViolation):
        c3.observe(*batch(clean, comp), grad=True)


def test_unsloth_patch_failure_warnings_are_errors():
    from ruscarl_lib.train.checks import UnslothPatchFailed, unsloth_failures_as_errors

    msg = "Unsloth: Warning - regex did not match, VLLMGeneration._init_vllm patch may have failed"
    logging.getLogger("unsloth_zoo.log").warning(msg)  # outside: only a warning
    with unsloth_failures_as_errors():
        logging.getLogger("unsloth_zoo.log").warning("Unsloth: an unrelated warning")
        with pytest.raises(UnslothPatchFailed, match="may have failed"):
            logging.getLogger("unsloth_zoo.log").warning(msg)
        with pytest.raises(UnslothPatchFailed):
            logging.getLogger("unsloth").warning(
                "Unsloth: Could not build the patched trl.trainer.grpo_trainer, so training will "
                "use trl's own trainer instead: KeyError")
        with pytest.raises(UserWarning):
            warnings.warn("sync_weights patch may have failed")
