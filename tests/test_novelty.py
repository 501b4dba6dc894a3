"""Novelty (likelihood ratio of trained over initial) and diversity (self-BLEU, cosine) measures."""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch

from ruscarl_lib.evaluate.novelty import (
    bleu_tokens,
    diversity_table,
    likelihood_ratios,
    load_embedder,
    mean_cosine_distance,
    novelty_summary,
    prompt_token_ids,
    response_logprobs,
    self_bleu,
    sentence_bleu,
)
from ruscarl_lib.models.tiny import build_tiny_model, build_tiny_tokenizer, save_tiny_model

PROMPTS = [
    [{"role": "user", "content": "I have a headache. What should I do?"}],
    [{"role": "system", "content": "You are a helpful assistant."},
     {"role": "user", "content": "My child has a rash after eating peanuts. Is it an allergy?"}],
    [{"role": "user", "content": "hello"}],
]
RESPONSES = [
    "Drink plenty of water, rest, and take paracetamol if needed.",
    "Call emergency services if the lips or tongue swell.",
    "yes",
]


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return build_tiny_model(tok, seed=0)


def _perturbed(model, scale=0.5, seed=1):
    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return other


def test_logprobs_match_the_model_loss_and_do_not_depend_on_batching(model, tok):
    batched = response_logprobs(model, tok, PROMPTS, RESPONSES, batch_size=3)
    single = response_logprobs(model, tok, PROMPTS, RESPONSES, batch_size=1)
    for a, b in zip(batched, single):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # independent computation: the LM loss over the response tokens only
    for messages, response, lp in zip(PROMPTS, RESPONSES, single):
        p = prompt_token_ids(tok, messages)
        r = tok(response, add_special_tokens=False).input_ids
        ids = torch.tensor([p + r])
        labels = torch.tensor([[-100] * len(p) + r])
        with torch.no_grad():
            loss = model(input_ids=ids, labels=labels).loss.item()
        assert lp.size == len(r)
        assert lp.sum() == pytest.approx(-loss * len(r), rel=1e-5)


def test_response_ids_skip_special_tokens(model, tok):
    ids = tok(RESPONSES[0], add_special_tokens=False).input_ids
    from_ids = response_logprobs(model, tok, PROMPTS[:1], response_ids=[ids + [tok.eos_token_id, tok.pad_token_id]])
    from_text = response_logprobs(model, tok, PROMPTS[:1], RESPONSES[:1])
    np.testing.assert_allclose(from_ids[0], from_text[0], atol=1e-6)


def test_model_against_itself_gives_ratio_one(model, tok):
    table = likelihood_ratios(model, tok, PROMPTS, RESPONSES, initial=model)
    assert table["ratio"].tolist() == [1.0, 1.0, 1.0]
    assert (table["n_tokens"] > 0).all()


def test_perturbed_model_differs_and_ratio_is_geometric_mean(model, tok):
    other = _perturbed(model)
    table = likelihood_ratios(other, tok, PROMPTS, RESPONSES, initial=model)
    assert (np.abs(table["log_ratio"]) > 1e-3).all()
    lp_a = response_logprobs(other, tok, PROMPTS, RESPONSES)
    lp_b = response_logprobs(model, tok, PROMPTS, RESPONSES)
    for row, a, b in zip(table.itertuples(), lp_a, lp_b):
        per_token = np.exp(a - b)
        assert row.ratio == pytest.approx(float(np.prod(per_token) ** (1 / per_token.size)), rel=1e-6)
    flipped = likelihood_ratios(model, tok, PROMPTS, RESPONSES, initial=other)
    np.testing.assert_allclose(flipped["ratio"] * table["ratio"], 1.0, rtol=1e-6)


def test_peft_adapter_disabled_is_the_initial_model(tok):
    from peft import LoraConfig, get_peft_model

    base = build_tiny_model(tok, seed=0)
    reference = copy.deepcopy(base)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    table = likelihood_ratios(peft_model, tok, PROMPTS, RESPONSES)
    explicit = likelihood_ratios(peft_model, tok, PROMPTS, RESPONSES, initial=reference)
    np.testing.assert_allclose(table["ratio"], explicit["ratio"], rtol=1e-5)
    assert (np.abs(table["log_ratio"]) > 1e-4).all()
    with pytest.raises(ValueError, match="PEFT"):
        likelihood_ratios(reference, tok, PROMPTS, RESPONSES)


def test_empty_response_is_nan(model, tok):
    table = likelihood_ratios(model, tok, PROMPTS[:2], ["", RESPONSES[1]], initial=model)
    assert table.loc[0, "n_tokens"] == 0 and math.isnan(table.loc[0, "ratio"])
    assert table.loc[1, "ratio"] == 1.0


def test_novelty_summary_counts():
    s = novelty_summary([1.0, 1.5, 3.0, 20.0, 500.0, float("nan")])
    assert s["n"] == 5 and s["median_ratio"] == 3.0
    assert (s["n_above_2"], s["n_above_10"], s["n_above_100"]) == (3, 2, 1)
    assert s["frac_above_2"] == pytest.approx(0.6)
    assert s["mean_log_ratio"] == pytest.approx(np.mean(np.log([1.0, 1.5, 3.0, 20.0, 500.0])))


# ------------------------------------------------------------------------------------------
# BLEU and diversity
# ------------------------------------------------------------------------------------------


def test_sentence_bleu_hand_computed():
    hyp = bleu_tokens("The cat sat on the mat")
    ref = bleu_tokens("the cat is on the mat")
    # clipped precisions 5/6, 3/5, 1/4, 0/3 (smoothed to 0.1/3); equal lengths: no penalty
    expected = math.exp((math.log(5 / 6) + math.log(3 / 5) + math.log(1 / 4) + math.log(0.1 / 3)) / 4)
    assert sentence_bleu(hyp, [ref]) == pytest.approx(expected)
    # brevity penalty: hypothesis of 3 tokens against a 6-token reference
    short = bleu_tokens("the cat is")
    p = [3 / 3, 2 / 2, 1 / 1]
    assert sentence_bleu(short, [ref]) == pytest.approx(math.exp(1 - 6 / 3) * math.exp(sum(map(math.log, p)) / 3))
    # clipping: a repeated word counts at most as often as in the reference
    assert sentence_bleu(["the", "the", "the"], [["the", "cat"]], max_n=1) == pytest.approx(1 / 3)


def test_self_bleu_extremes_and_symmetry():
    same = ["rest and drink water", "rest and drink water", "rest and drink water"]
    assert self_bleu(same) == pytest.approx(1.0)
    disjoint = ["alpha beta gamma delta", "one two three four", "red green blue yellow"]
    # nothing matches: every order is smoothed to 0.1 / count, counts 4, 3, 2, 1
    assert self_bleu(disjoint) == pytest.approx(0.1 / 24 ** 0.25)
    a, b = "take rest and drink a lot of water", "drink a lot of water and see a doctor"
    assert self_bleu([a, b]) == pytest.approx(
        (sentence_bleu(bleu_tokens(a), [bleu_tokens(b)]) + sentence_bleu(bleu_tokens(b), [bleu_tokens(a)])) / 2)
    assert 0.05 < self_bleu([a, b]) < 0.9
    assert math.isnan(self_bleu(["only one"]))


def test_cosine_distance():
    assert mean_cosine_distance(np.array([[1.0, 0.0], [2.0, 0.0]])) == pytest.approx(0.0)
    assert mean_cosine_distance(np.array([[1.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])) == pytest.approx((1 + 2 + 1) / 3)
    assert math.isnan(mean_cosine_distance(np.ones((1, 3))))


def test_diversity_table_with_and_without_embedder(tmp_path):
    samples = pd.DataFrame({
        "example_id": ["a", "a", "a", "b", "b"],
        "response": ["rest now", "rest now", "rest now", "see a doctor today", "drink water and rest"],
    })
    table = diversity_table(samples)
    assert table["example_id"].tolist() == ["a", "b"]
    assert table.loc[0, "diversity_bleu"] == pytest.approx(0.0)
    assert table.loc[1, "diversity_bleu"] > 0.5
    assert table["cosine_distance"].isna().all()
    assert load_embedder(str(tmp_path / "missing-model")) is None  # offline and absent: skipped
    embed = load_embedder(str(save_tiny_model(tmp_path / "tiny")))
    assert embed is not None
    with_cos = diversity_table(samples, embedder=embed)
    assert with_cos.loc[0, "cosine_distance"] == pytest.approx(0.0, abs=1e-6)
    assert with_cos.loc[1, "cosine_distance"] > 1e-4
