"""The RuscaRL training contract on CPU with a tiny model (METHOD.md sections 4 and 5).

- every log-probability the loss uses (old, reference, current) is computed on the clean
  prompt, while generation saw the scaffolded one; the `in_loss` ablation sees the scaffold;
- scaffold ratios and shown criteria follow the schedule per group position and RL step,
  also under gradient accumulation and several updates per step;
- evaluation rollouts are never scaffolded;
- with scaffolds off the trainer is stock TRL GRPO, bit for bit;
- an interrupted run resumes from its last checkpoint without repeating steps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch

from ruscarl_lib.params import TrainParams
from ruscarl_lib.train.run_folder import read_metrics, read_rollouts, trained_weights
from ruscarl_lib.scaffold.schedule import ScaffoldSchedule
from ruscarl_lib.scaffold.selection import n_shown, select_criteria
from ruscarl_lib.models.tiny import save_tiny_model
from ruscarl_lib.common.backends import BackendUnavailable
from ruscarl_lib.train.run import run_training
from ruscarl_lib.train.config import batch_geometry, build_grpo_config
from ruscarl_lib.train.backend import load_policy, prepare_backend
from ruscarl_lib.train.smoke_task import keyword_reward, make_examples, rule_examples
from ruscarl_lib.train.smoke_task import toy_params as tiny_params

pytestmark = pytest.mark.slow
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def _probe_cls():
    """The trainer that records what generation and every log-prob computation were given."""
    from ruscarl_lib.train.trainer_class import ContractProbe

    return ContractProbe


def _chat_ids(tokenizer, messages) -> tuple[int, ...]:
    enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    return tuple(enc["input_ids"])


# --------------------------------------------------------------------------------------------
# The contract
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def contract_run(model_dir, tmp_path_factory):
    """3 RL steps, 2 prompts x G=4, 2 optimizer updates per step, 2 micro-batches per update,
    KL on (so reference log-probs are computed) and old log-probs (several updates per step)."""
    out = tmp_path_factory.mktemp("contract")
    params = tiny_params(
        model_dir, out, "contract",
        updates_per_step=2, per_device_batch_size=2, kl_coef=0.05, max_steps=3,
    )
    examples = make_examples(6)
    result = run_training(params, train_examples=examples, reward_funcs=[keyword_reward], trainer_cls=_probe_cls())
    return params, examples, result


def test_geometry_has_gradient_accumulation(contract_run):
    params, _, result = contract_run
    args = result.trainer.args
    assert (args.gradient_accumulation_steps, args.steps_per_generation, args.max_steps) == (2, 4, 6)
    assert result.trainer.updates_per_rl_step == 2
    assert result.global_step == 6 and result.rl_steps == 3


def test_loss_sees_only_clean_prompts(contract_run):
    params, examples, result = contract_run
    trainer = result.trainer
    tok = trainer.processing_class
    by_id = {ex.id: ex for ex in examples}
    train_gen = [c for c in trainer.gen_calls if c["training"]]
    assert len(trainer.rounds) == len(train_gen) == 3  # one generation per RL step

    clean_pairs, scaffold_pairs = Counter(), Counter()
    n_scaffolded = 0
    for rnd, gen in zip(trainer.rounds, train_gen):
        for plan, loss_ids, gen_ids, completion in zip(
            rnd["plans"], rnd["loss_prompt_ids"], gen["prompt_ids"], gen["completion_ids"]
        ):
            clean = _chat_ids(tok, by_id[plan.example_id].messages)
            assert loss_ids == clean, "the loss must get the clean prompt's ids"
            assert gen_ids == _chat_ids(tok, plan.messages), "generation must see the scaffold"
            if plan.shown:
                n_scaffolded += 1
                assert len(gen_ids) > len(clean)
            else:
                assert gen_ids == clean
            clean_pairs[(clean, completion)] += 1
            scaffold_pairs[(gen_ids, completion)] += 1
    assert n_scaffolded > 0

    train_calls = [c for c in trainer.logp_calls if c["training"]]
    kinds = Counter(c["grad"] for c in train_calls)
    # no-grad calls: old log-probs (2 updates per step) and reference log-probs (KL), per step;
    # grad calls: the loss itself, one per micro-batch
    assert kinds[False] == 2 * 3 and kinds[True] == 2 * 2 * 3
    seen = Counter()
    for call in train_calls:
        for pair in call["rows"]:
            assert pair in clean_pairs, "a log-prob row does not use a clean prompt"
            seen[pair] += 1
    # every rollout is scored once for old, once for ref, once for the loss
    for pair, n in clean_pairs.items():
        assert seen[pair] == 3 * n
    scaffold_only = {p for p in scaffold_pairs if p not in clean_pairs}
    assert scaffold_only and not any(p in seen for p in scaffold_only)

    # the library's checker (used by the GPU smoke script) agrees
    from ruscarl_lib.train.contract import check_contract

    report = check_contract(trainer)
    assert (report.rollouts, report.scaffolded, report.loss_rows) == (24, n_scaffolded, 24)


def test_contract_checker_catches_a_scaffolded_loss_row(contract_run):
    import copy

    from ruscarl_lib.train.contract import ContractViolation, check_contract

    _, _, result = contract_run
    trainer = copy.copy(result.trainer)
    trainer.logp_calls = copy.deepcopy(result.trainer.logp_calls)
    gen = next(c for c in trainer.gen_calls if c["training"])
    plan_i = next(i for i, p in enumerate(trainer.rounds[0]["plans"]) if p.shown)
    bad = (gen["prompt_ids"][plan_i], gen["completion_ids"][plan_i])
    call = next(c for c in trainer.logp_calls if c["training"] and c["grad"])
    call["rows"][0] = bad
    with pytest.raises(ContractViolation):
        check_contract(trainer)


def test_ratios_and_criteria_follow_schedule(contract_run):
    params, examples, result = contract_run
    by_id = {ex.id: ex for ex in examples}
    schedule = ScaffoldSchedule.from_params(params.scaffold)
    G, T = params.train.group_size, params.train.max_steps
    df = read_rollouts(result.run_dir)
    assert len(df) == T * params.train.prompts_per_step * G
    assert sorted(df.rl_step.unique()) == [1, 2, 3]
    for _, r in df.iterrows():
        expected = schedule.ratio(r.group_position, G, r.rl_step, T)
        assert r.scaffold_ratio == pytest.approx(expected)
        n = len(by_id[r.example_id].rubric)
        assert r.n_shown == n_shown(n, expected)
        assert list(r.shown) == select_criteria(
            n, expected, seed=params.scaffold.seed, example_id=r.example_id,
            step=r.rl_step, group_position=r.group_position,
        )
    for _, group in df.groupby(["rl_step", "group"]):
        assert sorted(group.group_position) == list(range(G))
        assert group.example_id.nunique() == 1
    # linear decay over 3 steps: full scaffold at step 1, none at step 3
    assert df[df.rl_step == 1].scaffold_ratio.max() == 1.0
    assert df[df.rl_step == 3].n_shown.max() == 0
    # the reward's per-criterion verdicts reach the table
    assert "verdicts" in df.columns and df.reward.notna().all()


def test_metrics_file(contract_run):
    _, _, result = contract_run
    m = read_metrics(result.run_dir)
    assert list(m.step) == list(range(1, 7))
    for key in ("reward", "reward_std", "frac_reward_zero_std", "kl", "entropy",
                "completions/mean_length", "scaffold/ratio_mean", "scaffold/criteria_shown_mean"):
        assert key in m.columns, key
    assert list(m.rl_step) == [1, 1, 2, 2, 3, 3]
    assert m["scaffold/ratio_mean"].dropna().iloc[0] == pytest.approx(0.5)  # mean of 1, 2/3, 1/3, 0
    files = {p.name for p in result.run_dir.iterdir()}
    assert {"adapter", "params.yaml", "versions.json", "metrics.jsonl", "rollouts"} <= files
    assert (result.weights_dir / "adapter_config.json").exists()
    assert result.weights_dir == result.run_dir / "adapter" and trained_weights(result.run_dir) == result.weights_dir
    versions = json.loads((result.run_dir / "versions.json").read_text())
    assert versions["trl"] == "1.15.0"


def test_evaluation_is_never_scaffolded(contract_run):
    _, examples, result = contract_run
    from ruscarl_lib.train.dataset import to_train_dataset

    trainer = result.trainer
    tok = trainer.processing_class
    before = len(trainer.gen_calls)
    trainer.evaluate(eval_dataset=to_train_dataset(examples[:2]))
    eval_calls = trainer.gen_calls[before:]
    assert eval_calls and not any(c["training"] for c in eval_calls)
    clean = {_chat_ids(tok, ex.messages) for ex in examples[:2]}
    for call in eval_calls:
        assert set(call["prompt_ids"]) <= clean

    from ruscarl_lib.train.contract import check_eval_unscaffolded

    assert check_eval_unscaffolded(trainer, [{"prompt": ex.messages} for ex in examples[:2]]) > 0


def test_in_loss_ablation_sees_scaffold(model_dir, tmp_path):
    params = tiny_params(model_dir, tmp_path, "in_loss", max_steps=1, scaffold={"in_loss": True})
    result = run_training(params, train_examples=make_examples(4), reward_funcs=[keyword_reward],
                          trainer_cls=_probe_cls())
    trainer = result.trainer
    (gen,) = [c for c in trainer.gen_calls if c["training"]]
    (rnd,) = trainer.rounds
    assert rnd["loss_prompt_ids"] == gen["prompt_ids"]
    assert any(plan.shown for plan in rnd["plans"])
    expected = Counter(zip(gen["prompt_ids"], gen["completion_ids"]))
    seen = Counter(pair for c in trainer.logp_calls if c["grad"] for pair in c["rows"])
    assert seen == expected

    from ruscarl_lib.train.contract import check_contract

    assert check_contract(trainer).in_loss


def test_default_rubric_reward_end_to_end(model_dir, tmp_path):
    """No reward_funcs: the `judge` section's RubricReward (rule judge) grades the clean prompt,
    its verdicts reach the rollout table and its accounting the metrics."""
    params = tiny_params(model_dir, tmp_path, "judge", max_steps=1)
    params = params.model_copy(update={"judge": params.judge.model_copy(update={"kind": "rule"})})
    result = run_training(params, train_examples=rule_examples(4))
    df = read_rollouts(result.run_dir)
    assert len(df) == 8 and df.reward.notna().all()
    assert "judge_verdicts" in df.columns
    assert all(len(v) == n for v, n in zip(df.judge_verdicts, df.n_criteria))
    m = read_metrics(result.run_dir)
    assert any(c.startswith("judge/") for c in m.columns)


def test_overlong_penalty_joins_the_rubric_reward(model_dir, tmp_path):
    """`train.overlong_buffer`: a second reward column, the length penalty of each rollout, added
    to the rubric reward before the advantages."""
    from ruscarl_lib.train.reward import OverlongPenalty

    params = tiny_params(model_dir, tmp_path, "overlong", max_steps=1)
    tp = params.train.model_copy(update={"overlong_buffer": params.train.max_completion_length - 1})
    params = params.model_copy(update={"judge": params.judge.model_copy(update={"kind": "rule"}), "train": tp})
    df = read_rollouts(run_training(params, train_examples=rule_examples(4)).run_dir)
    pen = OverlongPenalty(tp.max_completion_length, tp.overlong_buffer, tp.overlong_penalty)
    assert df["reward/overlong_penalty"].tolist() == pytest.approx([pen.value(n) for n in df.completion_tokens])
    assert (df["reward/overlong_penalty"] < 0).any()
    rubric = [c for c in df.columns if c.startswith("reward/") and c != "reward/overlong_penalty"]
    assert len(rubric) == 1
    assert df.reward.tolist() == pytest.approx((df[rubric[0]] + df["reward/overlong_penalty"]).tolist())


def _spread_reward(prompts, completions, **kwargs) -> list[float]:
    """A reward that differs between answers (a digest of the text), so groups have advantages
    of both signs even when every answer is cut at the cap."""
    import zlib

    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [zlib.crc32(t.encode()) % 7 / 7 for t in texts]


class _LossInputsMixin:
    """Keeps what `_generate_and_score_completions` hands the loss."""

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        if self.model.training:
            self.seen = [*getattr(self, "seen", []),
                         {k: out[k].detach().clone() for k in
                          ("completion_ids", "completion_mask", "advantages", "num_items_in_batch")}]
        return out


def test_truncated_mask_positive_keeps_cut_answers_that_lose(model_dir, tmp_path):
    """`truncated_mask: positive`: an answer cut at the cap leaves the loss only when its
    advantage is positive; a cut answer scoring below its group keeps its whole mask (so it is
    pushed down), finished answers keep theirs, and the token count the loss divides by matches."""
    with pytest.raises(ValueError, match="needs mask_truncated_completions"):
        TrainParams(model="m", truncated_mask="positive")
    params = tiny_params(model_dir, tmp_path, "cutmask", max_steps=3, max_completion_length=4,
                         mask_truncated_completions=True, truncated_mask="positive")
    assert build_grpo_config(params, tmp_path / "cfg").mask_truncated_completions is False  # ours, not TRL's
    res = run_training(params, train_examples=make_examples(4), reward_funcs=[_spread_reward],
                       trainer_cls=_LossInputsMixin)
    tok = res.trainer.processing_class
    stop = {tok.eos_token_id, tok.pad_token_id, *getattr(res.trainer, "eos_token_ids", [])}
    kinds = Counter()
    for batch in res.trainer.seen:
        assert int(batch["num_items_in_batch"]) == int(batch["completion_mask"].sum())
        for ids, mask, adv in zip(batch["completion_ids"].tolist(), batch["completion_mask"].tolist(),
                                  batch["advantages"].tolist()):
            # rows are right-padded, so a row whose last position is no stop token ran to the cap
            # (the tiny model may write the pad token mid-answer: TRL, too, reads only the end)
            if ids[-1] not in stop:
                kind = "cut, gains" if adv > 0 else "cut, loses"
                assert mask == ([0] * len(ids) if adv > 0 else [1] * len(ids)), (kind, mask)
            else:
                kind = "finished"
                n = sum(mask)
                assert n > 0 and mask == [1] * n + [0] * (len(ids) - n) and ids[n - 1] in stop
            kinds[kind] += 1
    assert kinds["cut, gains"] and kinds["cut, loses"], kinds  # both cases really occurred


class _KLCapProbe:
    """Records each capping: the reference log-probs before, the policy's, and the batch TRL reads."""

    def _cap_kl_log_ratio(self, inputs, per_token_logps):
        before = inputs["ref_per_token_logps"]
        super()._cap_kl_log_ratio(inputs, per_token_logps)
        self.caps = [*getattr(self, "caps", []), (before.clone(), per_token_logps.detach().clone(),
                                                  inputs["ref_per_token_logps"].clone(), inputs["completion_mask"])]

    def _compute_loss(self, model, inputs):
        ref = inputs.get("ref_per_token_logps")
        kept = None if ref is None else ref.clone()
        loss = super()._compute_loss(model, inputs)
        if kept is not None:  # the batch itself is not rewritten (it may be used again)
            assert torch.equal(inputs["ref_per_token_logps"], kept)
        return loss


def test_kl_log_ratio_cap_bounds_the_reference_log_ratio(model_dir, tmp_path):
    """`train.kl_log_ratio_cap`: in the batch TRL's k3 term reads, log(ref/policy) is capped at c
    (ref replaced by min(ref, policy + c)), tokens below the cap are unchanged, and both kinds occur."""
    with pytest.raises(ValueError, match="kl_coef=0 turns off"):
        TrainParams(model="m", kl_coef=0.0, kl_log_ratio_cap=3.0)
    cap = 1e-6
    params = tiny_params(model_dir, tmp_path, "klcap", max_steps=3, kl_coef=0.05, kl_log_ratio_cap=cap)
    res = run_training(params, train_examples=make_examples(4), reward_funcs=[_spread_reward],
                       trainer_cls=_KLCapProbe)
    assert len(res.trainer.caps) >= 3  # every loss computation of every step was capped
    capped = untouched = 0
    for before, policy, after, mask in res.trainer.caps:
        assert torch.allclose(after, torch.minimum(before, policy + cap))
        over = (before - policy > cap) & mask.bool()
        capped += int(over.sum())
        untouched += int((~over & mask.bool()).sum())
        assert torch.equal(after[~over], before[~over])
    assert capped and untouched, (capped, untouched)
    m = read_metrics(res.run_dir)
    assert "kl/capped_token_ratio" in m.columns and m["kl/capped_token_ratio"].dropna().between(0, 1).all()


# --------------------------------------------------------------------------------------------
# Baseline = same path with the flag off = stock TRL
# --------------------------------------------------------------------------------------------


def test_scaffolds_off_is_stock_grpo(model_dir, tmp_path):
    from trl import GRPOTrainer

    from ruscarl_lib.train.dataset import to_train_dataset
    from ruscarl_lib.train.trl_compat import install_logprob_fallback

    install_logprob_fallback()
    params = tiny_params(model_dir, tmp_path, "off", max_steps=2, kl_coef=0.05, scaffold={"enabled": False})
    examples = make_examples(6)
    ours = run_training(params, train_examples=examples, reward_funcs=[keyword_reward], trainer_cls=_probe_cls())
    assert all(not p.shown for rnd in ours.trainer.rounds for p in rnd["plans"])

    class StockProbe(GRPOTrainer):
        def __init__(self, *a, **kw):
            self.gen_calls = []
            super().__init__(*a, **kw)

        def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, **kw):
            out = super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations, **kw)
            self.gen_calls.append(([tuple(p) for p in prompt_ids], [tuple(c) for c in out[0]]))
            return out

    policy = load_policy(params.train, seed=0, backend="transformers")
    config = build_grpo_config(params, tmp_path / "stock", world_size=1)
    stock = StockProbe(
        model=policy.model, reward_funcs=[keyword_reward], args=config,
        train_dataset=to_train_dataset(examples), processing_class=policy.tokenizer,
        peft_config=policy.peft_config,
    )
    stock.train()
    ours_calls = [(c["prompt_ids"], c["completion_ids"]) for c in ours.trainer.gen_calls if c["training"]]
    assert ours_calls == stock.gen_calls
    a = {k: v for k, v in ours.trainer.model.state_dict().items() if "lora" in k}
    b = {k: v for k, v in stock.model.state_dict().items() if "lora" in k}
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_on_and_off_runs_differ_only_in_scaffold(model_dir, tmp_path):
    on = tiny_params(model_dir, tmp_path, "same")
    off = on.model_copy(update={"scaffold": on.scaffold.model_copy(update={"enabled": False})})
    a = build_grpo_config(on, tmp_path, world_size=1).to_dict()
    b = build_grpo_config(off, tmp_path, world_size=1).to_dict()
    assert a == b
    assert a["vllm_importance_sampling_correction"] is False
    diff = {k for k in on.model_dump() if on.model_dump()[k] != off.model_dump()[k]}
    assert diff == {"scaffold"}


# --------------------------------------------------------------------------------------------
# Checkpoints and resume
# --------------------------------------------------------------------------------------------


def test_resume_does_not_repeat_steps(model_dir, tmp_path):
    """5 RL steps over 6 examples (3 steps per epoch), checkpoints at 2 and 4; the run dies
    while logging step 5 (in the second epoch) and is started again."""
    from transformers import TrainerCallback

    class Crash(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.global_step == 5 and logs and "loss" in logs:
                raise KeyboardInterrupt("simulated interruption")

    examples = make_examples(6)
    common = dict(max_steps=5, save_steps=2)
    ref = run_training(tiny_params(model_dir, tmp_path, "ref", **common), train_examples=examples,
                       reward_funcs=[keyword_reward])
    params = tiny_params(model_dir, tmp_path, "crash", **common)
    with pytest.raises(KeyboardInterrupt):
        run_training(params, train_examples=examples, reward_funcs=[keyword_reward], callbacks=[Crash()])
    assert list(read_metrics(params.output.dir + "/crash").step) == [1, 2, 3, 4, 5]
    resumed = run_training(params, train_examples=examples, reward_funcs=[keyword_reward])
    assert resumed.resumed_from is not None and resumed.resumed_from.name == "checkpoint-4"
    assert resumed.global_step == 5

    metrics = read_metrics(resumed.run_dir)
    assert list(metrics.step) == [1, 2, 3, 4, 5]
    got, want = read_rollouts(resumed.run_dir), read_rollouts(ref.run_dir)
    assert list(got.rl_step.value_counts().sort_index()) == [8] * 5
    # same data order, scaffolds and (restored RNG) completions as the uninterrupted run
    cols = ["rl_step", "example_id", "group_position", "scaffold_ratio", "n_shown", "completion"]
    assert got[cols].equals(want[cols])


def test_rerun_with_changed_settings_refuses(model_dir, tmp_path):
    """A run folder remembers what trained it: 3x the learning rate is refused (naming the key,
    params.yaml untouched), the same settings resume, `train.resume: false` starts afresh, and
    other data or other weights under the same path are changes too."""
    from ruscarl_lib.common.fingerprint import RunSettingsChanged

    examples = make_examples(4)
    first = tiny_params(model_dir, tmp_path, "fp", max_steps=2, save_steps=1, learning_rate=1e-3)
    run_training(first, train_examples=examples, reward_funcs=[keyword_reward])
    run_dir = tmp_path / "fp"
    saved = (run_dir / "params.yaml").read_text()
    assert json.loads((run_dir / "fingerprint.json").read_text())["values"]["train.learning_rate"] == 1e-3

    faster = tiny_params(model_dir, tmp_path, "fp", max_steps=2, save_steps=1, learning_rate=3e-3)
    with pytest.raises(RunSettingsChanged, match=r"train\.learning_rate: 0\.001 -> 0\.003") as err:
        run_training(faster, train_examples=examples, reward_funcs=[keyword_reward])
    assert "changed: train.learning_rate)" in str(err.value) and "resume=false" in str(err.value)
    assert (run_dir / "params.yaml").read_text() == saved
    with pytest.raises(RunSettingsChanged, match="data.content"):
        run_training(first, train_examples=make_examples(5)[1:], reward_funcs=[keyword_reward])
    # keys that do not change training (where it logs) are not part of it
    again = tiny_params(model_dir, tmp_path, "fp", max_steps=2, save_steps=1, learning_rate=1e-3,
                        logging_steps=2)
    resumed = run_training(again, train_examples=examples, reward_funcs=[keyword_reward])
    assert resumed.resumed_from is not None and resumed.resumed_from.name == "checkpoint-2"

    fresh = faster.model_copy(deep=True)
    fresh.train.resume = False
    restarted = run_training(fresh, train_examples=examples, reward_funcs=[keyword_reward])
    assert restarted.resumed_from is None and restarted.global_step == 2
    assert json.loads((run_dir / "fingerprint.json").read_text())["values"]["train.learning_rate"] == 3e-3
    assert "0.003" in (run_dir / "params.yaml").read_text()

    # the same model path holding other weights
    import shutil

    other = tmp_path / "model_copy"
    shutil.copytree(model_dir, other)
    moved = tiny_params(other, tmp_path, "fp", max_steps=2, save_steps=1, learning_rate=3e-3)
    assert run_training(moved, train_examples=examples, reward_funcs=[keyword_reward]).resumed_from is not None
    weights = next(other.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x01")
    with pytest.raises(RunSettingsChanged, match="model.weights"):
        run_training(moved, train_examples=examples, reward_funcs=[keyword_reward])


def test_judge_failing_for_several_steps_stops_training_with_checkpoint(model_dir, tmp_path):
    """The rule judge cannot grade the toy criteria (no verifier tags): every verdict fails, and
    training stops after `failure_patience` steps with a clear error, checkpoint kept."""
    from ruscarl_lib.train.reward import JudgeFailureError

    params = tiny_params(model_dir, tmp_path, "judge_down", max_steps=6, save_steps=100)
    params.judge.cache_path = None
    params.judge.failure_patience = 2
    with pytest.raises(JudgeFailureError, match="failed on more than 10% of criteria for 2 consecutive steps"):
        run_training(params, train_examples=make_examples(4))
    ckpts = sorted(p.name for p in (tmp_path / "judge_down" / "checkpoints").glob("checkpoint-*"))
    assert ckpts == ["checkpoint-2"]
    assert not (tmp_path / "judge_down" / "adapter").exists()
    # worst_case scoring: the failed negative criterion counted met, so rewards are negative
    assert (read_rollouts(tmp_path / "judge_down")["reward"] < 0).all()


def test_script_entry_point(model_dir, tmp_path):
    """`python -m ruscarl_lib.train.run --params f.yaml --set k=v`: YAML, overrides, the data
    section (embedded sample) and the judge section, as `accelerate launch` would run it."""
    import yaml

    from ruscarl_lib.train.run import main

    raw = tiny_params(model_dir, tmp_path, "cli").model_dump(mode="json")
    raw["data"]["limit"] = 2
    raw["judge"]["kind"] = "rule"
    raw["train"]["max_prompt_length"] = 1024
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(raw))
    assert main(["--params", str(f), "--set", "train.max_steps=1", "--set", "scaffold.enabled=false"]) == 0
    saved = yaml.safe_load((tmp_path / "cli" / "params.yaml").read_text())
    assert saved["train"]["max_steps"] == 1 and saved["scaffold"]["enabled"] is False
    assert (tmp_path / "cli" / "adapter" / "adapter_model.safetensors").exists()
    assert len(read_rollouts(tmp_path / "cli")) == 8


# --------------------------------------------------------------------------------------------
# Guards and small units
# --------------------------------------------------------------------------------------------


def test_max_scaffold_tokens_drops_or_refuses_overlong_rubrics(model_dir, caplog):
    import logging

    from ruscarl_lib.params import ScaffoldParams
    from ruscarl_lib.data.rubric import Criterion, RubricExample
    from ruscarl_lib.models.tiny import load_tokenizer
    from ruscarl_lib.train.dataset import build_train_dataset, scaffold_length

    tok = load_tokenizer(str(model_dir))
    examples = make_examples(3)
    long_rubric = [Criterion(f"The response explains point number {i} about headaches in detail", 2.0)
                   for i in range(40)]
    examples.append(RubricExample(id="long", messages=examples[0].messages, rubric=long_rubric))
    lengths = {ex.id: scaffold_length(tok, ex) for ex in examples}
    limit = max(v for k, v in lengths.items() if k != "long")
    assert lengths["long"] > limit
    # points shown or not changes the measured length (the scaffold settings are used)
    assert scaffold_length(tok, examples[-1], ScaffoldParams(show_points=False)) < lengths["long"]
    with caplog.at_level(logging.WARNING, logger="ruscarl_lib.train.run"):
        ds = build_train_dataset(examples, tok, 128, max_scaffold_tokens=limit)
    assert "long" not in ds["example_id"] and len(ds) == 3
    assert "dropped 1 of 4 examples whose full-rubric scaffold exceeds max_scaffold_tokens" in caplog.text
    with pytest.raises(ValueError, match="example 'long'"):
        build_train_dataset(examples, tok, 128, max_scaffold_tokens=limit, overlong_scaffold="error")
    assert len(build_train_dataset(examples, tok, 128)) == 4  # no limit given: everything kept


def test_trl_version_guard(monkeypatch):
    import trl

    from ruscarl_lib.train.trl_version import TRLVersionError, check_trl_support

    check_trl_support()
    monkeypatch.setattr(trl, "__version__", "1.16.0")
    with pytest.raises(TRLVersionError, match="1.15"):
        check_trl_support()


def test_group_check_rejects_split_groups():
    from types import SimpleNamespace

    from ruscarl_lib.train.trainer_class import ScaffoldedGRPOTrainer

    fake = SimpleNamespace(num_generations=4)
    ScaffoldedGRPOTrainer._check_groups(fake, ["a"] * 4 + ["b"] * 4, 0)
    with pytest.raises(RuntimeError, match="not G copies"):
        ScaffoldedGRPOTrainer._check_groups(fake, ["a", "b"] * 4, 0)


def test_batch_geometry():
    geo = batch_geometry(TrainParams(group_size=8, prompts_per_step=64, updates_per_step=2,
                                     per_device_batch_size=8), world_size=8)
    assert (geo.gradient_accumulation_steps, geo.steps_per_generation) == (4, 8)
    with pytest.raises(ValueError, match="per_device_batch_size"):
        batch_geometry(TrainParams(group_size=4, prompts_per_step=1, per_device_batch_size=3), 1)
    with pytest.raises(ValueError, match="processes"):
        batch_geometry(TrainParams(group_size=3, prompts_per_step=1, per_device_batch_size=1), 2)


def test_torch_logprob_fallback_matches_log_softmax():
    from ruscarl_lib.train.trl_compat import torch_chunked_logprobs

    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(7, 16, generator=g, requires_grad=True)
    weight = torch.randn(50, 16, generator=g)
    targets = torch.randint(0, 50, (7,), generator=g)
    lp, ent, lss, mean, top1 = torch_chunked_logprobs(hidden, weight, None, targets, 0.7, 4096)
    logits = hidden @ weight.t() / 0.7
    ref = torch.log_softmax(logits, -1)
    assert torch.allclose(lp, ref.gather(-1, targets[:, None]).squeeze(-1), atol=1e-5)
    assert torch.allclose(ent, -(ref.exp() * ref).sum(-1), atol=1e-5)
    assert torch.allclose(mean, logits.mean(-1), atol=1e-5)
    assert torch.equal(top1, logits.argmax(-1) == targets)
    lp.sum().backward()
    assert hidden.grad is not None


def test_backends_on_cpu():
    assert prepare_backend(TrainParams(backend="auto")) == "transformers"
    try:
        import unsloth  # noqa: F401
    except ImportError:
        with pytest.raises(BackendUnavailable, match="gpu"):
            prepare_backend(TrainParams(backend="unsloth"))


# --------------------------------------------------------------------------------------------
# Two processes (gloo): group positions and scaffold draws do not depend on the process count
# --------------------------------------------------------------------------------------------


def test_two_processes_keep_groups_and_seeds(model_dir, tmp_path):
    """One prompt per step and G=4 over 2 processes: each group is split across processes
    (positions 0-1 on rank 0, 2-3 on rank 1). The written table must match a 1-process run."""
    script = HERE / "mp_train_script.py"
    env = {**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)])}
    # `--cpu` would use the MPI launcher (one process without mpirun); `--multi_gpu` goes
    # through torchrun, and with no GPU accelerate falls back to gloo on CPU.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           str(script), str(model_dir), str(tmp_path), "mp"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    single = subprocess.run([sys.executable, str(script), str(model_dir), str(tmp_path), "sp"],
                            env=env, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    mp, sp = read_rollouts(tmp_path / "mp"), read_rollouts(tmp_path / "sp")
    info = json.loads((tmp_path / "mp" / "world.json").read_text())
    assert info["world_size"] == 2 and info["gradient_accumulation_steps"] == 1
    cols = ["rl_step", "group", "group_position", "example_id", "scaffold_ratio", "n_shown"]
    assert len(mp) == len(sp) == 3 * 4
    assert mp[cols].equals(sp[cols])
    assert [list(x) for x in mp["shown"]] == [list(x) for x in sp["shown"]]


# --------------------------------------------------------------------------------------------
# Scaffolded rollouts prefilled without padding (packed rows, length buckets)
# --------------------------------------------------------------------------------------------


def test_length_buckets_are_optimal_and_cover_every_row():
    import itertools
    import random

    from ruscarl_lib.train.prefill import length_buckets

    def cost(buckets, lengths):
        return sum(len(b) * max(lengths[i] for i in b) for b in buckets)

    rng = random.Random(0)
    for _ in range(60):
        n = rng.randint(1, 8)
        lengths = [rng.choice([5, 9, 9, 20, 31, 44]) for _ in range(n)]
        for k in (1, 2, 3, 8):
            buckets = length_buckets(lengths, k)
            assert sorted(i for b in buckets for i in b) == list(range(n))
            assert len(buckets) <= k and all(b == sorted(b) for b in buckets)
            # brute force over every split of the sorted rows into at most k runs
            order = sorted(range(n), key=lambda i: (lengths[i], i))
            best = min(
                cost([order[a:b] for a, b in zip((0, *cuts), (*cuts, n))], lengths)
                for m in range(min(k, n))
                for cuts in itertools.combinations(range(1, n), m)
            )
            assert cost(buckets, lengths) == best
    assert length_buckets([7, 7, 7, 7], 4) == [[0, 1, 2, 3]]  # nothing gained: one batch
    assert length_buckets([30, 5, 30, 5], 2) == [[1, 3], [0, 2]]
    assert length_buckets([], 3) == []


def _greedy_cls(one_at_a_time: bool = False):
    """A trainer that decodes greedily; optionally generating every prompt on its own."""
    from ruscarl_lib.train.trainer_class import ContractProbe

    class Greedy(ContractProbe):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.generation_config.do_sample = False
            self.generation_kwargs["do_sample"] = False

        def _generate_unpadded(self, prompt_ids, scaffolded):
            if not one_at_a_time:
                return super()._generate_unpadded(prompt_ids, scaffolded)
            return [self._generate_single_turn([p], None, {}, 1)[0][0] for p in prompt_ids]

    return Greedy


@pytest.fixture(scope="module")
def sharp_model_dir(model_dir, tmp_path_factory) -> Path:
    """The tiny model with its weight matrices scaled 8x. At the initial scale every prompt
    decodes greedily to the same newlines; scaled, logits spread out and the greedy completion
    depends on the prompt, so comparing completions means something."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(8.0)
    out = tmp_path_factory.mktemp("sharp") / "model"
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    return out


def test_unpadded_rollout_table_matches_one_prompt_at_a_time(sharp_model_dir, tmp_path):
    """Greedy decoding, one RL step of 4 prompts x G=4 with scaffolds: the rollout table with a
    packed prefill, with length buckets and with one padded call, each against generating every
    prompt alone (no padding).

    Padding changes the floating-point sums of a batch, so greedy decoding can pick a different
    token where the two best logits (nearly) tie. A completion that differs from the
    one-at-a-time one is accepted only if, at its first differing token, the unpadded model's
    logits of the two tokens are within 1e-4 of each other (and at most a quarter of the rows
    may differ); everything else in the table (rows, groups, positions, ratios, shown
    criteria, prompts) must match exactly."""
    from transformers import AutoModelForCausalLM

    from ruscarl_lib.train.contract import check_contract

    def run(name: str, prefill: str, one: bool = False):
        params = tiny_params(sharp_model_dir, tmp_path, name, max_steps=1, prompts_per_step=4,
                             max_completion_length=8, rollout_prefill=prefill, rollout_buckets=4)
        res = run_training(params, train_examples=make_examples(8), reward_funcs=[keyword_reward],
                           trainer_cls=_greedy_cls(one))
        table = read_rollouts(tmp_path / name).sort_values(["rl_step", "group", "group_position"])
        calls = [c for c in res.trainer.gen_calls if c["training"]]
        if not one:  # the loss still sees only clean prompts
            check_contract(res.trainer)
        pairs = [pc for c in calls for pc in zip(c["prompt_ids"], c["completion_ids"])]  # row order
        return table.reset_index(drop=True), calls, pairs

    single, single_calls, single_pairs = run("single", "padded")
    bucketed, bucketed_calls, bucketed_pairs = run("bucketed", "buckets")
    packed, packed_calls, packed_pairs = run("packed", "packed")
    truth, truth_calls, truth_pairs = run("alone", "padded", one=True)
    summary = [(c["batch_sizes"], c["prefill_mode"], c["prefill_buckets"]) for c in single_calls + packed_calls]
    assert summary == [([16], "padded", []), ([16], "packed", [16])]  # one decode batch of all rows
    # one decode batch of all rows, its prefill really in length buckets
    assert len(bucketed_calls) == 1 and bucketed_calls[0]["batch_sizes"] == [16]
    assert bucketed_calls[0]["prefill_mode"] == "buckets"
    assert len(bucketed_calls[0]["prefill_buckets"]) > 1 and sum(bucketed_calls[0]["prefill_buckets"]) == 16
    assert len(truth_calls) == 16 and len(set(truth["rollout_prompt_tokens"])) > 4
    assert truth["completion"].nunique() >= 8  # completions depend on the prompt

    fixed = ["rl_step", "group", "group_position", "example_id", "scaffold_ratio", "n_shown",
             "prompt", "rollout_prompt", "clean_prompt_tokens", "rollout_prompt_tokens"]
    for table in (single, bucketed, packed):
        assert table[fixed].equals(truth[fixed])
        assert [list(x) for x in table["shown"]] == [list(x) for x in truth["shown"]]

    # the model that generated step 1, unpadded (the LoRA adds exactly zero before any update)
    model = AutoModelForCausalLM.from_pretrained(sharp_model_dir).eval()
    with torch.no_grad():
        for prompt, ref in truth_pairs:  # the trainer's one-at-a-time rows are plain generate's
            out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                 do_sample=False, max_new_tokens=8, eos_token_id=model.config.eos_token_id)
            assert tuple(out[0, len(prompt):].tolist())[: len(ref)] == ref
    differing = {}
    for name, pairs, table in (("single", single_pairs, single), ("bucketed", bucketed_pairs, bucketed),
                               ("packed", packed_pairs, packed)):
        assert [p for p, _ in pairs] == [p for p, _ in truth_pairs]
        rows = []
        for row, ((prompt, got), (_, ref)) in enumerate(zip(pairs, truth_pairs)):
            if got == ref:
                continue
            t = next(i for i, (a, b) in enumerate(zip(got, ref)) if a != b)
            with torch.no_grad():
                logits = model(torch.tensor([list(prompt) + list(ref[:t])])).logits[0, -1]
            gap = abs(float(logits[ref[t]] - logits[got[t]]))
            assert gap < 1e-4, f"{name} row {row} differs from one-at-a-time at token {t}; logit gap {gap}"
            rows.append(row)
        differing[name] = rows
        assert len(rows) <= len(pairs) // 4, differing
        same = [r for r in range(len(table)) if r not in rows]
        assert list(table["completion"][same]) == list(truth["completion"][same])


def _left_padded(lengths, vocab, pad, seed=0):
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), pad)
    mask = torch.zeros((len(lengths), width), dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, width - n:] = torch.randint(5, vocab, (n,), generator=g)
        mask[i, width - n:] = 1
    return ids, mask


def _cpu_sdpa_model(model_dir):
    from transformers import AutoModelForCausalLM

    from ruscarl_lib.models.attention import use_cpu_sdpa

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    assert use_cpu_sdpa(model)
    return model


def test_packed_prefill_caches_every_row_as_if_alone(sharp_model_dir):
    """The packed prefill's cache and next-token logits hold, for every row, those of the row
    prefilled alone (to 1e-5; mostly bit for bit), zeros on padding; generate with it in place of
    its own prefill runs one forward fewer than padded prefill plus decode would, picks the greedy
    tokens of one padded call with the same scores (1e-4), samples like it, and is restored."""
    from ruscarl_lib.train.prefill import prefill_packed, unpadded_prefill

    model = _cpu_sdpa_model(sharp_model_dir)
    lengths = [40, 31, 7, 7, 38, 12, 3, 1]
    ids, mask = _left_padded(lengths, model.config.vocab_size, model.config.pad_token_id)
    with torch.no_grad():
        cache, logits = prefill_packed(model, ids, mask)
        assert logits.shape == (8, 1, model.config.vocab_size)
        width, exact, compared = ids.shape[1], 0, 0
        for row, n in enumerate(lengths):
            laid = [(layer.keys[row], layer.values[row]) for layer in cache.layers]
            assert all(k.shape[-2] == width for k, _ in laid)
            assert not any(k[:, : width - n].any() or v[:, : width - n].any() for k, v in laid)  # padding
            alone = model(input_ids=ids[row: row + 1, width - n:], use_cache=True)
            pairs = [(logits[row, 0], alone.logits[0, -1])]
            pairs += [(got[:, width - n:], ref[0]) for (k, v), layer in zip(laid, alone.past_key_values.layers)
                      for got, ref in ((k, layer.keys), (v, layer.values))]
            for got, want in pairs:
                assert torch.allclose(got, want, rtol=0, atol=1e-5)  # GEMMs of other shapes round apart
                exact += torch.equal(got, want)
                compared += 1
        assert exact >= compared * 3 // 4, (exact, compared)
        kw = dict(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=6, min_new_tokens=6,
                  output_scores=True, return_dict_in_generate=True, pad_token_id=model.config.pad_token_id)
        plain = model.generate(**kw)
        forwards = []
        hook = model.register_forward_hook(lambda *a: forwards.append(1))
        try:
            with unpadded_prefill(model, "packed") as record:
                packed = model.generate(**kw)
        finally:
            hook.remove()
        assert "generate" not in vars(model) and "_prefill" not in vars(model)
        assert len(forwards) == 6  # the packed prefill, then 5 decode steps
        sample = dict(input_ids=ids, attention_mask=mask, do_sample=True, max_new_tokens=6,
                      pad_token_id=model.config.pad_token_id)
        torch.manual_seed(3)
        drawn = model.generate(**sample)
        torch.manual_seed(3)
        with unpadded_prefill(model, "packed"):
            drawn_packed = model.generate(**sample)
    assert (record.mode, record.bucket_sizes, record.fallback) == ("packed", [8], None)
    assert torch.equal(plain.sequences, packed.sequences)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(plain.scores, packed.scores))  # -inf alike
    assert torch.equal(drawn, drawn_packed)  # the same RNG draws: one call's sampling


def test_bucketed_prefill_decodes_like_one_padded_batch(sharp_model_dir):
    """The merged cache of a bucketed prefill holds every row's keys and values of a single
    padded prefill (padding columns aside), and generate decoding from it picks the same greedy
    tokens with the same scores; the model's own `generate` is back afterwards. Buckets need no
    particular attention implementation: this model runs stock `sdpa`."""
    from transformers import AutoModelForCausalLM

    from ruscarl_lib.train.prefill import length_buckets, prefill_in_buckets, unpadded_prefill

    model = AutoModelForCausalLM.from_pretrained(sharp_model_dir).eval()
    assert model.config._attn_implementation == "sdpa"
    lengths = [40, 31, 7, 7, 38, 12, 3, 1]
    ids, mask = _left_padded(lengths, model.config.vocab_size, model.config.pad_token_id)
    with torch.no_grad():
        cache, sizes = prefill_in_buckets(model, ids, mask, 3)
        assert sizes == [len(b) for b in length_buckets(lengths, 3)] == [4, 1, 3]
        positions = (mask[:, :-1].cumsum(-1) - 1).clamp(min=0)  # as generate numbers left-padded rows
        whole = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions,
                      use_cache=True).past_key_values
        real = mask[:, :-1].bool()
        for merged, ref in zip(cache.layers, whole.layers):
            for a, b in ((merged.keys, ref.keys), (merged.values, ref.values)):
                assert a.shape == b.shape
                assert torch.allclose(a.transpose(1, 2)[real], b.transpose(1, 2)[real], atol=1e-5)
                assert not a.transpose(1, 2)[~real].any()  # padding columns stay empty
        kw = dict(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=6, min_new_tokens=6,
                  output_scores=True, return_dict_in_generate=True, pad_token_id=model.config.pad_token_id)
        plain = model.generate(**kw)
        with unpadded_prefill(model, "buckets", 3) as record:
            bucketed = model.generate(**kw)
        assert "generate" not in vars(model)
    assert (record.mode, record.fallback, record.bucket_sizes) == ("buckets", None, [4, 1, 3])
    assert torch.equal(plain.sequences, bucketed.sequences)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(plain.scores, bucketed.scores))  # -inf alike


def test_unpadded_prefill_falls_back_where_it_cannot_help(sharp_model_dir):
    from transformers import AutoModelForCausalLM

    from ruscarl_lib.train.prefill import prefill_in_buckets, prefill_packed, unpadded_prefill

    stock = AutoModelForCausalLM.from_pretrained(sharp_model_dir).eval()
    model = _cpu_sdpa_model(sharp_model_dir)
    vocab, pad = model.config.vocab_size, model.config.pad_token_id
    ids, mask = _left_padded([9, 9, 9], vocab, pad)
    assert prefill_in_buckets(model, ids, mask, 4) == (None, "one bucket already minimises padding")
    assert prefill_packed(model, ids, mask) == (None, "no padding to remove")
    with torch.no_grad(), unpadded_prefill(model, "packed") as record:
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2, do_sample=False, pad_token_id=pad)
    assert (record.mode, record.fallback) == ("padded", "no padding to remove")
    ids, mask = _left_padded([9, 2, 9], vocab, pad)
    assert prefill_in_buckets(model, ids.flip(-1), mask.flip(-1), 4)[1] == "batch is not left-padded"
    assert prefill_packed(model, ids.flip(-1), mask.flip(-1))[1] == "batch is not left-padded"
    assert prefill_packed(stock, ids, mask)[1].startswith("attention implementation 'sdpa'")
    with torch.no_grad(), unpadded_prefill(model, "buckets", 4) as record:
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2, do_sample=False,
                             pad_token_id=pad, past_key_values=None)
    assert out.shape == (3, 11) and record.bucket_sizes == [1, 2]
    with torch.no_grad(), unpadded_prefill(model, "packed") as record:
        model.generate(ids, attention_mask=mask, max_new_tokens=2, do_sample=False, pad_token_id=pad)
    assert record.fallback == "not a plain input_ids/attention_mask call" and record.mode == "padded"
    with torch.no_grad(), unpadded_prefill(stock, "packed") as record:
        stock.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2, do_sample=False, pad_token_id=pad)
    assert record.mode == "padded" and record.fallback.startswith("attention implementation")
    model.config.layer_types = ["sliding_attention"] * model.config.num_hidden_layers
    try:
        assert prefill_packed(model, ids, mask)[1].startswith("layer types ['sliding_attention']")
    finally:
        model.config.layer_types = ["full_attention"] * model.config.num_hidden_layers
    with pytest.raises(ValueError, match="prefill mode 'ragged'"):
        with unpadded_prefill(model, "ragged"):
            pass


def test_packed_prefill_checks_the_private_prefill_stage(sharp_model_dir, monkeypatch):
    """generate's `_prefill` is private: a transformers without it, or with other leading
    parameters, gets a named reason and plain generate calls, never a broken replacement."""
    from transformers import GenerationMixin

    from ruscarl_lib.train.prefill import packed_prefill_unavailable, unpadded_prefill

    assert packed_prefill_unavailable() is None  # the pinned transformers has it
    model = _cpu_sdpa_model(sharp_model_dir)
    vocab, pad = model.config.vocab_size, model.config.pad_token_id
    ids, mask = _left_padded([9, 2, 9], vocab, pad)
    plain = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2, do_sample=False, pad_token_id=pad)

    def renamed(self, inputs, generation_config, model_kwargs):
        raise AssertionError("a stage of another signature must not be called through the packed path")

    monkeypatch.setattr(GenerationMixin, "_prefill", renamed)
    assert "takes ['inputs', 'generation_config', 'model_kwargs']" in packed_prefill_unavailable()
    monkeypatch.delattr(GenerationMixin, "_prefill")
    reason = packed_prefill_unavailable()
    assert reason.endswith("has no GenerationMixin._prefill")
    monkeypatch.undo()
    monkeypatch.setattr("ruscarl_lib.train.prefill.packed_prefill_unavailable", lambda: reason)
    with torch.no_grad(), unpadded_prefill(model, "packed") as record:
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2, do_sample=False,
                             pad_token_id=pad)
    assert (record.mode, record.fallback) == ("padded", reason)
    assert torch.equal(out, plain)


def test_trainer_warns_when_a_model_cannot_pack(model_dir, tmp_path):
    """A model handed in already loaded (not through `load_policy`) keeps stock `sdpa`, where
    packing cannot run: the trainer says so at start-up instead of every batch falling back
    unseen; `rollout_prefill: padded` says it on purpose and gets no warning."""
    from transformers import AutoModelForCausalLM

    from ruscarl_lib.models.tiny import load_tokenizer
    from ruscarl_lib.train.backend import Policy
    from ruscarl_lib.train.prefill import packed_prefill_blocked_by

    def policy():
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        return Policy(model=model, tokenizer=load_tokenizer(model_dir), peft_config=None, backend="transformers")

    stock = policy()
    assert packed_prefill_blocked_by(stock.model).startswith("attention implementation 'sdpa'")
    assert packed_prefill_blocked_by(_cpu_sdpa_model(model_dir)) is None
    for mode in ("packed", "padded"):
        params = tiny_params(model_dir, tmp_path, mode, max_steps=1, rollout_prefill=mode, finetune="full")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = run_training(params, train_examples=make_examples(4), reward_funcs=[keyword_reward],
                                  policy=policy())
        said = [str(w.message) for w in caught if "rollout_prefill: packed cannot run" in str(w.message)]
        assert len(said) == (1 if mode == "packed" else 0), said
        if mode == "packed":
            assert "attention implementation 'sdpa'" in said[0]
            assert result.trainer.last_prefill.fallback.startswith("attention implementation 'sdpa'")


def test_cpu_sdpa_attention_is_bit_identical_to_stock_sdpa(model_dir):
    """Grouped KV heads with a padding mask: outputs and greedy tokens equal stock `sdpa` bit for
    bit; with autograd on, the stock function runs (so loss gradients are stock's too); a model
    without grouped heads runs the stock function under the new name; decode-step masks equal
    stock's; packed rows refuse attention calls they cannot serve."""
    from transformers import AutoModelForCausalLM
    from transformers.masking_utils import sdpa_mask

    import ruscarl_lib.models.attention as attention
    from ruscarl_lib.models.attention import NAME, _mask, packed_rows, use_cpu_sdpa
    from ruscarl_lib.models.tiny import build_tiny_model, build_tiny_tokenizer

    stock = AutoModelForCausalLM.from_pretrained(model_dir)
    ours = AutoModelForCausalLM.from_pretrained(model_dir)
    assert stock.config.num_key_value_heads < stock.config.num_attention_heads
    assert use_cpu_sdpa(ours) and ours.config._attn_implementation == NAME
    ids, mask = _left_padded([30, 4, 17, 30], stock.config.vocab_size, stock.config.pad_token_id)
    calls = []
    real = attention._grouped_sdpa
    attention._grouped_sdpa = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        with torch.no_grad():
            a = stock(input_ids=ids, attention_mask=mask).logits
            b = ours(input_ids=ids, attention_mask=mask).logits
            assert calls, "the grouped path did not run"
            assert torch.equal(a[mask.bool()], b[mask.bool()])
            kw = dict(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=5, pad_token_id=0)
            assert torch.equal(stock.generate(**kw), ours.generate(**kw))
        calls.clear()
        stock(input_ids=ids, attention_mask=mask).logits.sum().backward()
        ours(input_ids=ids, attention_mask=mask).logits.sum().backward()
        assert not calls
        plain_heads = build_tiny_model(build_tiny_tokenizer(), num_heads=4, num_kv_heads=4).eval()
        twin = build_tiny_model(build_tiny_tokenizer(), num_heads=4, num_kv_heads=4).eval()
        assert use_cpu_sdpa(twin)
        with torch.no_grad():
            assert torch.equal(plain_heads(input_ids=ids, attention_mask=mask).logits,
                               twin(input_ids=ids, attention_mask=mask).logits)
        assert not calls
    finally:
        attention._grouped_sdpa = real
    assert all(torch.equal(p.grad, q.grad) for p, q in zip(stock.parameters(), ours.parameters()))

    width = ids.shape[1]
    for q_length, kv_length, q_offset in ((1, width, width - 1), (1, width - 2, width - 3), (3, width, width - 3),
                                          (width, width, 0)):
        got = _mask(batch_size=4, q_length=q_length, kv_length=kv_length, q_offset=q_offset, attention_mask=mask)
        want = sdpa_mask(batch_size=4, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                         attention_mask=mask)
        assert got.shape == want.shape and torch.equal(got, want)
    assert _mask(batch_size=4, q_length=1, kv_length=width, q_offset=width - 1,
                 attention_mask=torch.ones_like(mask)) is None  # no padding: SDPA runs without a mask
    with torch.no_grad(), packed_rows([2, 3]):
        with pytest.raises(RuntimeError, match="batch of 4 rows"):
            ours(input_ids=ids[:, :5])
    with pytest.raises(RuntimeError, match="autograd is on"), packed_rows([2, 3]):
        ours(input_ids=ids[:1, :5])
    with pytest.raises(ValueError, match="positive lengths"), packed_rows([2, 0]):
        pass


def test_vllm_cpu_linear_patch_keeps_loaded_weights_and_is_idempotent(monkeypatch):
    """vLLM's CPU build swaps each linear weight for an empty Parameter after loading; the patch
    must keep the loaded weight (so TRL's colocate sync can copy into it) and apply only once."""
    import sys
    import types

    from ruscarl_lib.train.trl_compat import keep_vllm_cpu_weights_reloadable

    class UnquantizedLinearMethod:
        def process_weights_after_loading(self, layer):
            layer.weight = torch.nn.Parameter(torch.empty(0), requires_grad=False)  # what vLLM CPU does

    linear = types.ModuleType("vllm.model_executor.layers.linear")
    linear.UnquantizedLinearMethod = UnquantizedLinearMethod
    for name in ("vllm", "vllm.model_executor", "vllm.model_executor.layers"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "vllm.model_executor.layers.linear", linear)
    sys.modules["vllm.model_executor.layers"].linear = linear

    layer = torch.nn.Linear(3, 2)
    assert keep_vllm_cpu_weights_reloadable() is True
    patched = UnquantizedLinearMethod.process_weights_after_loading
    assert keep_vllm_cpu_weights_reloadable() is True and UnquantizedLinearMethod.process_weights_after_loading is patched
    UnquantizedLinearMethod().process_weights_after_loading(layer)
    assert layer.weight.shape == (2, 3) and layer.cpu_linear is torch.nn.functional.linear

    for name in ("vllm", "vllm.model_executor", "vllm.model_executor.layers", "vllm.model_executor.layers.linear"):
        monkeypatch.setitem(sys.modules, name, None)  # no vLLM: nothing patched
    assert keep_vllm_cpu_weights_reloadable() is False
