"""The CPU sandbox: seeded world, exact rule grading, held-out split, policy cache, hint-following."""

from __future__ import annotations

import json

import pytest

from ruscarl_lib.data.read import load_examples
from ruscarl_lib.data.write import write_jsonl
from ruscarl_lib.sandbox import (
    PolicyConfig,
    SFTDataConfig,
    WorldConfig,
    build_world,
    completion_logprob,
    ensure_policy,
    grade_response,
    policy_dir,
    policy_key,
    rule_phrase,
    sft_conversations,
)
from ruscarl_lib.sandbox.policy import POLICY_FORMAT
from ruscarl_lib.sandbox.sft_data import answer_text
from ruscarl_lib.sandbox.criteria import OFFTOPIC_TIERS, is_offtopic, is_repeat
from ruscarl_lib.scaffold.render import render_scaffold

# A world and model small enough to warm-start in a few seconds on one core.
TINY_WORLD = WorldConfig(n_conditions=6, conditions_per_task=2, n_distractors=0, n_train=24, n_heldout=8, n_validation=8, heldout_share=0.3, validation_share=0.25, seed=3)
TINY_POLICY = PolicyConfig(
    hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=2, epochs=3, batch_size=16, learning_rate=5e-3,
    sft=SFTDataConfig(n_examples=240, unhinted_share=0.5),
)


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _dump(world):
    return json.dumps([ex.to_dict() for ex in world.train + world.heldout], sort_keys=True)


def test_world_is_seeded_and_reproducible():
    a, b = build_world(seed=5), build_world(seed=5)
    assert _dump(a) == _dump(b)
    assert _dump(a) != _dump(build_world(seed=6))
    assert a.conditions == b.conditions


def test_knobs_shape_the_tasks():
    w = build_world(n_conditions=40, conditions_per_task=3, n_distractors=2, n_train=20, n_heldout=10, repeat_points=3)
    assert len(w.conditions) == 40  # more than the curated list: synthetic conditions fill in
    assert len({c.advice for c in w.conditions}) == 40
    for ex in w.train + w.heldout:
        assert len(ex.extra["conditions"]) == 3
        assert sum(c.points > 0 for c in ex.rubric) == 3
        assert all(c.points < 0 for c in ex.rubric[3:]) and len(ex.rubric) >= 3 + 1 + len(OFFTOPIC_TIERS) + 1
        assert all(is_offtopic(c) for c in ex.rubric[-len(OFFTOPIC_TIERS) - 1 : -1])
        assert is_repeat(ex.rubric[-1])
        assert ex.messages[-1]["content"].count(" . ") == 1 + 3 + 2  # age, conditions, distractors
        for c in ex.rubric[:-1]:
            assert c.tag_value("verifier") == "rule" and c.tag_value("function") == "contains"
            assert c.tag_value("axis") in ("completeness", "accuracy", "context_awareness")
        assert ex.rubric[-1].tag_value("function") == "regex"
    plain = build_world(negatives=False, offtopic_points=0, repeat_points=0, n_train=5, n_heldout=5)
    assert all(c.points > 0 for ex in plain.train for c in ex.rubric)


def test_heldout_combinations_are_unseen_in_training():
    w = build_world(n_train=400, n_heldout=100, n_validation=60)
    train, held, val = set(w.combos("train")), set(w.combos("heldout")), set(w.combos("validation"))
    assert held and train and val and not (train & held) and not (train & val) and not (val & held)
    assert all(w.is_heldout_combo(c) for c in held) and not any(w.is_heldout_combo(c) for c in train | val)
    assert all(w.combo_split(c) == "validation" for c in val)
    # every condition is learnable from training tasks
    assert {k for combo in train for k in combo} == {c.key for c in w.conditions}
    # the warm-start data never uses held-out combinations either
    rows = sft_conversations(w, SFTDataConfig(n_examples=200))
    keys = {c.key: c.statement for c in w.conditions}
    for row in rows:
        user = row["prompt"][-1]["content"]
        combo = tuple(sorted(k for k, s in keys.items() if f". {s} ." in f". {user}"))
        assert w.combo_split(combo) == "train"


def test_sft_hints_carry_no_world_answers():
    """Decoy hints pair conditions with advice at random: the world's mapping is not taught."""
    w = build_world()
    rows = sft_conversations(w, SFTDataConfig(n_examples=600, unhinted_share=0.0))
    true_pairs = hits = 0
    for row in rows:
        user = row["prompt"][-1]["content"]
        system = row["prompt"][0]["content"] if row["prompt"][0]["role"] == "system" else ""
        for c in w.conditions:
            if f". {c.statement} ." in f". {user}" and f"for {c.name}: {c.advice}." in system:
                true_pairs += 1
        hits += system.count("gives this advice for")
    assert hits > 300
    assert true_pairs / hits < 0.25  # chance level is 2/16; the real mapping would give 1.0


def test_rule_criteria_grade_known_answers_exactly():
    w = build_world()
    ex = w.heldout[0]
    conds = [w.condition(k) for k in ex.extra["conditions"]]
    pos = [c for c in ex.rubric if c.points > 0]
    neg = [c for c in ex.rubric if c.points < 0]
    total = sum(c.points for c in pos)
    generic = "thanks for the details . rest as much as you can . see a doctor if things get worse ."
    assert grade_response(ex, generic)["score"] == 0.0
    full = " ".join(f"you should {c.advice} ." for c in conds)
    assert grade_response(ex, full)["score"] == pytest.approx(1.0)
    # upper case and one piece of advice plus one harmful remedy
    one_bad = f"YOU SHOULD {conds[0].advice.upper()} . you could try {conds[1].rules_out} ."
    harm = next(c for c in neg if rule_phrase(c) in conds[1].rules_out)
    expected = (pos[0].points + harm.points) / total
    g = grade_response(ex, one_bad)
    assert g["score"] == pytest.approx(expected)
    assert (g["n_positive_met"], g["n_negative_met"]) == (1, 1)
    # advice for conditions the user did not mention costs more the more of it there is
    present = set(ex.extra["conditions"])
    strangers = [c.advice for c in w.conditions if c.key not in present]
    offtopic = [c.points for c in ex.rubric if is_offtopic(c)]
    for n, expected_penalty in ((1, offtopic[0]), (2, sum(offtopic[:2])), (3, sum(offtopic)), (len(strangers), sum(offtopic))):
        sprayed = full + " " + " ".join(f"you need to {a} ." for a in strangers[:n])
        assert grade_response(ex, sprayed)["score"] == pytest.approx((total + expected_penalty) / total)
    # reciting every advice there is scores nothing: the tiers outweigh the positives
    recite = " ".join(f"you need to {c.advice} ." for c in w.conditions)
    assert grade_response(ex, recite)["score"] <= 0.0


def test_world_round_trips_through_jsonl(tmp_path):
    w = build_world(n_train=10, n_heldout=5)
    path = write_jsonl(w.heldout, tmp_path / "heldout.jsonl")
    back = load_examples(path)
    assert [e.rubric for e in back] == [e.rubric for e in w.heldout]
    answer = " ".join(f"you should {w.condition(k).advice} ." for k in w.heldout[2].extra["conditions"])
    assert grade_response(back[2], answer)["score"] == pytest.approx(1.0)


def test_sft_answers_follow_the_hints_they_show():
    import numpy as np

    w = build_world()
    ex = w.train[0]
    conds = [w.condition(k) for k in ex.extra["conditions"]]
    rng = np.random.default_rng(0)
    for _ in range(50):
        text = answer_text(w, conds, ex.rubric, rng, remedy_rate=1.0)
        assert grade_response(ex, text)["score"] == pytest.approx(1.0)  # all advice, no ruled-out remedy
        assert all(f"for {c.name}: you need to " in text for c in conds)  # one line per condition
        bare = answer_text(w, conds, [], rng, remedy_rate=0.0)
        assert grade_response(ex, bare)["score"] == 0.0
        assert "you need to" not in bare and all(f"for {c.name}: " in bare for c in conds)


def test_policy_cache_rebuilds_on_config_change(tmp_path):
    world = build_world(TINY_WORLD)
    quick = PolicyConfig(hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1, epochs=1, batch_size=16,
                         sft=SFTDataConfig(n_examples=32))
    p1 = ensure_policy(world, quick, root=tmp_path)
    stamp = (p1.path / "model.safetensors").stat().st_mtime_ns
    p2 = ensure_policy(world, quick, root=tmp_path)  # cached: not rebuilt
    assert p2.path == p1.path and (p2.path / "model.safetensors").stat().st_mtime_ns == stamp
    changed = PolicyConfig(**{**quick.__dict__, "learning_rate": quick.learning_rate * 2})
    assert policy_key(world.config, changed) != policy_key(world.config, quick)
    p3 = ensure_policy(world, changed, root=tmp_path)
    assert p3.path != p1.path and p3.path == policy_dir(world.config, changed, tmp_path)
    other_world = WorldConfig(**{**TINY_WORLD.to_dict(), "seed": 4})
    assert policy_key(other_world, quick) != policy_key(world.config, quick)
    meta = json.loads((p1.path / "sandbox_policy.json").read_text())
    assert meta["format"] == POLICY_FORMAT and meta["world"] == TINY_WORLD.to_dict()
    # the tokenizer round-trips words, so contains-phrase rules can match decoded text
    tok = p2.tokenizer
    text = f"you should {world.conditions[0].advice} ."
    assert tok.decode(tok(text)["input_ids"]) == text
    # training and evaluation load it the same way (a plain AutoTokenizer would not: Qwen2Tokenizer)
    from ruscarl_lib.models.tiny import load_tokenizer

    assert load_tokenizer(p2.path)(text)["input_ids"] == tok(text)["input_ids"]


def test_warm_started_policy_prefers_hinted_advice(tmp_path):
    """After a very small SFT, the hinted prompt makes the hinted answer far more likely."""
    world = build_world(TINY_WORLD)
    policy = ensure_policy(world, TINY_POLICY, root=tmp_path)
    gains = []
    for ex in world.heldout[:4]:
        first, second = (world.condition(k) for k in ex.extra["conditions"])
        answer = f"thanks for the details . you need to {first.advice} . you need to {second.advice} . see a doctor if things get worse ."
        hinted = render_scaffold(ex.messages, ex.rubric)
        gains.append(
            completion_logprob(policy.model, policy.tokenizer, hinted, answer)
            - completion_logprob(policy.model, policy.tokenizer, ex.messages, answer)
        )
    assert min(gains) > 2.0, gains


def test_repeating_an_advice_is_penalised():
    """Repeating a correct advice line until the length cap must not be free (it was, and RL ran away)."""
    w = build_world(n_train=4, n_heldout=2, n_validation=2, repeat_points=3)
    ex = w.train[0]
    conds = [w.condition(k) for k in ex.extra["conditions"]]
    once = " ".join(f"for {c.name}: you need to {c.advice} ." for c in conds)
    twice = once + f" for {conds[0].name}: you need to {conds[0].advice} ."
    assert grade_response(ex, once)["score"] == pytest.approx(1.0)
    repeat = ex.rubric[-1]
    total = sum(c.points for c in ex.rubric if c.points > 0)
    assert grade_response(ex, twice)["score"] == pytest.approx(1.0 + repeat.points / total)
    # the warm start's answers never repeat an advice
    rows = sft_conversations(w, SFTDataConfig(n_examples=300))
    from ruscarl_lib.judges.rules import check_rule

    assert not any(check_rule(repeat, r["completion"][0]["content"]).met for r in rows)


def test_stuttering_is_penalised_and_the_warm_start_never_stutters():
    """ "for a fever: you you you ... you need to rest" meets the advice criterion (its verifier
    matches a phrase); with `stutter_points` it costs its points, and the warm start's own
    answers, hinted or not, never trip it."""
    from ruscarl_lib.judges.rules import check_rule
    from ruscarl_lib.sandbox.criteria import is_guard

    w = build_world(n_train=4, n_heldout=2, n_validation=2, stutter_points=3)
    ex = w.train[0]
    stutter = ex.rubric[-1]
    assert is_guard(stutter) and stutter.points == -3
    conds = [w.condition(k) for k in ex.extra["conditions"]]
    clean = " ".join(f"for {c.name}: you need to {c.advice} ." for c in conds)
    stuttered = " ".join(f"for {c.name}: you you you you need to {c.advice} ." for c in conds)
    total = sum(c.points for c in ex.rubric if c.points > 0)
    assert grade_response(ex, clean)["score"] == pytest.approx(1.0)
    assert grade_response(ex, stuttered)["score"] == pytest.approx(1.0 + stutter.points / total)
    assert not check_rule(stutter, "you need to rest . you need to rest .").met  # a repeat, not a stutter
    rows = sft_conversations(w, SFTDataConfig(n_examples=300))
    assert not any(check_rule(stutter, r["completion"][0]["content"]).met for r in rows)
    # off by default: the rubric of the default world is unchanged
    assert not any(is_guard(c) and "same word" in c.text for c in build_world(n_train=4, n_heldout=2, n_validation=2).train[0].rubric)
