"""Rubric scores, failure policies and HealthBench aggregation (METHOD.md section 3)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ruscarl_lib.data.rubric import Criterion, RubricExample
from ruscarl_lib.judges.scoring import (
    AggregateScore,
    aggregate_score,
    example_score,
    overall_score,
    score_examples,
    tag_scores,
    verdict_table,
)

# ---------------------------------------------------------------------------- example_score


def test_all_judged_with_negative_criteria():
    # (5 + 3 - 4) / (5 + 3 + 2)
    assert example_score([5, 3, -4, 2], [True, True, True, False]) == pytest.approx(0.4)
    assert example_score([5, 3, -4, 2], [True, True, False, True]) == pytest.approx(1.0)
    assert example_score([5, 3, -4, 2], [False] * 4) == 0.0


def test_score_is_not_clipped():
    assert example_score([2, -5], [False, True]) == pytest.approx(-2.5)


POINTS = [5, 3, -4, 2]
MET = [True, None, None, False]  # a failed positive and a failed negative


def test_failure_policy_exclude():
    # drop both failures: 5 / (5 + 2)
    assert example_score(POINTS, MET, "exclude") == pytest.approx(5 / 7)
    assert example_score(POINTS, MET) == pytest.approx(5 / 7)  # the default


def test_failure_policy_worst_case():
    # failed positive not met, failed negative met: (5 - 4) / 10
    assert example_score(POINTS, MET, "worst_case") == pytest.approx(0.1)


def test_failure_policy_not_met():
    # both count as not met, so the penalty disappears: 5 / 10
    assert example_score(POINTS, MET, "not_met") == pytest.approx(0.5)


def test_policies_agree_without_failures_and_nan_means_failed():
    for policy in ("exclude", "worst_case", "not_met"):
        assert example_score([1, -1, 3], [True, True, True], policy) == pytest.approx(0.75)
    assert example_score(POINTS, [True, float("nan"), pd.NA, False]) == pytest.approx(5 / 7)


def test_zero_denominator_gives_nan():
    assert math.isnan(example_score([-3, -1], [True, False]))
    assert math.isnan(example_score([4, -1], [None, True], "exclude"))
    assert example_score([4, -1], [None, True], "worst_case") == pytest.approx(-0.25)
    assert math.isnan(example_score([], []))


def test_example_score_rejects_bad_input():
    with pytest.raises(ValueError):
        example_score([1, 2], [True])
    with pytest.raises(ValueError):
        example_score([1], [True], "optimistic")


# ---------------------------------------------------------------------------- aggregation


def test_clip_is_applied_to_the_mean_not_per_example():
    agg = aggregate_score([-1.0, 0.5], n_bootstrap=10)
    assert agg.score == 0.0  # mean -0.25 clipped; per-example clipping would give 0.25
    assert agg.unclipped == pytest.approx(-0.25)  # reported next to it: clipping hides this
    assert aggregate_score([1.4, 1.2], n_bootstrap=10).score == 1.0
    assert aggregate_score([0.2, 0.4, 0.9]).score == pytest.approx(0.5)


def test_bootstrap_std_uses_clipped_means():
    values = [-0.5] * 50 + [0.1] * 50  # every resample mean is negative -> clipped to 0
    assert aggregate_score(values).std == 0.0
    # the same spread shifted into [0, 1] has a positive std
    assert aggregate_score([v + 0.6 for v in values]).std > 0.01


def test_bootstrap_reproducible_and_close_to_theory():
    rng = np.random.default_rng(123)
    values = rng.uniform(0.2, 0.8, size=300)
    a = aggregate_score(values, seed=7)
    b = aggregate_score(values, seed=7)
    c = aggregate_score(values, seed=8)
    assert a == b
    assert a.std != c.std
    assert a.n == 300
    theory = np.std(values) / np.sqrt(len(values))
    assert a.std == pytest.approx(theory, rel=0.1)


def test_aggregate_ignores_nan():
    agg = aggregate_score([0.5, float("nan"), 0.7, float("nan")])
    assert agg.n == 2 and agg.score == pytest.approx(0.6)
    empty = aggregate_score([float("nan")])
    assert empty.n == 0 and math.isnan(empty.score)


# ---------------------------------------------------------------------------- tables


def _examples() -> list[RubricExample]:
    a = RubricExample(
        id="A",
        messages=[{"role": "user", "content": "q"}],
        rubric=[
            Criterion("a0", 4, ("axis:accuracy", "level:example")),
            Criterion("a1", 6, ("axis:completeness", "level:example")),
            Criterion("a2", -2, ("axis:accuracy", "level:example")),
        ],
        tags=["theme:a"],
    )
    b = RubricExample(
        id="B",
        messages=[{"role": "user", "content": "q"}],
        rubric=[
            Criterion("b0", 5, ("axis:accuracy", "level:cluster")),
            Criterion("b1", -3, ("axis:completeness", "level:cluster")),
        ],
        tags=["theme:a", "theme:b"],
    )
    return [a, b]


MET_BY_EXAMPLE = {"A": [True, False, True], "B": [True, True]}


def test_verdict_table_layout():
    t = verdict_table(_examples(), {"A": [True, None, False], "B": [False, True]})
    assert list(t.columns) == [
        "example_id", "criterion_index", "points", "met", "criterion_tags", "example_tags",
    ]
    assert len(t) == 5
    assert t["example_id"].tolist() == ["A", "A", "A", "B", "B"]
    assert t["criterion_index"].tolist() == [0, 1, 2, 0, 1]
    assert t["points"].tolist() == [4.0, 6.0, -2.0, 5.0, -3.0]
    assert t["met"].tolist() == [True, None, False, False, True]
    assert tuple(t["criterion_tags"].iloc[0]) == ("axis:accuracy", "level:example")
    assert tuple(t["example_tags"].iloc[3]) == ("theme:a", "theme:b")


def test_verdict_table_checks_inputs():
    with pytest.raises(ValueError):
        verdict_table(_examples(), {"A": [True], "B": [True, True]})
    with pytest.raises(KeyError):
        verdict_table(_examples(), {"A": [True, True, True]})
    with pytest.raises(KeyError):
        verdict_table(_examples(), {**MET_BY_EXAMPLE, "Z": []})
    partial = verdict_table(_examples(), {"A": [True, True, True]}, require_all=False)
    assert set(partial["example_id"]) == {"A"}


def test_score_examples_and_overall():
    t = verdict_table(_examples(), MET_BY_EXAMPLE)
    s = score_examples(t)
    assert list(s.columns) == ["example_id", "score", "n_failed"]
    # A: (4 - 2) / 10 = 0.2 ; B: (5 - 3) / 5 = 0.4
    assert s["example_id"].tolist() == ["A", "B"]
    assert s["score"].tolist() == pytest.approx([0.2, 0.4])
    assert s["n_failed"].tolist() == [0, 0]
    agg = overall_score(t)
    assert isinstance(agg, AggregateScore)
    assert agg.score == pytest.approx(0.3) and agg.n == 2


def test_score_examples_with_failures_per_policy():
    t = verdict_table(_examples(), {"A": [True, None, None], "B": [None, False]})
    by_policy = {p: score_examples(t, p) for p in ("exclude", "worst_case", "not_met")}
    assert by_policy["exclude"]["n_failed"].tolist() == [2, 1]
    # A exclude: 4/4 ; worst_case: (4 - 2)/10 ; not_met: 4/10
    # B exclude: no positive left -> NaN ; worst_case: 0/5 ; not_met: 0/5
    assert by_policy["exclude"]["score"].iloc[0] == pytest.approx(1.0)
    assert math.isnan(by_policy["exclude"]["score"].iloc[1])
    assert by_policy["worst_case"]["score"].tolist() == pytest.approx([0.2, 0.0])
    assert by_policy["not_met"]["score"].tolist() == pytest.approx([0.4, 0.0])
    assert overall_score(t, "exclude").n == 1


def test_tag_scores_hand_computed():
    t = verdict_table(_examples(), MET_BY_EXAMPLE)
    ts = tag_scores(t, n_bootstrap=50).set_index("tag")
    # axis:accuracy  A: (4 - 2)/4 = 0.5   B: 5/5 = 1.0        -> 0.75 over 2
    # axis:completeness A: 0/6 = 0.0      B: no positive, skipped -> 0.0 over 1
    # level:example A overall criteria -> 0.2 ; level:cluster B -> 0.4
    # theme:a gets the overall scores 0.2 and 0.4 -> 0.3 ; theme:b only B -> 0.4
    expected = {
        "axis:accuracy": (0.75, 2),
        "axis:completeness": (0.0, 1),
        "level:example": (0.2, 1),
        "level:cluster": (0.4, 1),
        "theme:a": (0.3, 2),
        "theme:b": (0.4, 1),
    }
    assert set(ts.index) == set(expected)
    for tag, (score, n) in expected.items():
        assert ts.loc[tag, "score"] == pytest.approx(score), tag
        assert ts.loc[tag, "n"] == n, tag
    assert list(tag_scores(t).columns) == ["tag", "score", "std", "n"]


def test_tag_scores_follow_failure_policy():
    t = verdict_table(_examples(), {"A": [True, False, None], "B": [True, True]})
    excl = tag_scores(t, "exclude", n_bootstrap=10).set_index("tag")
    worst = tag_scores(t, "worst_case", n_bootstrap=10).set_index("tag")
    # axis:accuracy for A: exclude 4/4 = 1, worst case (4 - 2)/4 = 0.5; B is 1.0 either way
    assert excl.loc["axis:accuracy", "score"] == pytest.approx(1.0)
    assert worst.loc["axis:accuracy", "score"] == pytest.approx(0.75)


def test_tag_scores_accept_list_tags_from_round_trip():
    t = verdict_table(_examples(), MET_BY_EXAMPLE)
    t2 = t.copy()
    t2["criterion_tags"] = [list(x) for x in t["criterion_tags"]]
    t2["example_tags"] = [np.array(x) for x in t["example_tags"]]
    pd.testing.assert_frame_equal(tag_scores(t, n_bootstrap=20), tag_scores(t2, n_bootstrap=20))


def test_bootstrap_over_prompts_when_answers_are_correlated():
    """8 answers per prompt that mostly share the prompt's difficulty: resampling prompts gives
    the honest (larger) spread; resampling single answers understates it."""
    rng = np.random.default_rng(0)
    quality = rng.uniform(0.1, 0.9, size=40)
    values = np.concatenate([np.clip(q + rng.normal(0, 0.05, size=8), 0, 1) for q in quality])
    prompts = np.repeat([f"p{i}" for i in range(40)], 8)
    per_answer = aggregate_score(values, n_bootstrap=2000)
    per_prompt = aggregate_score(values, n_bootstrap=2000, groups=prompts)
    assert per_prompt.score == per_answer.score
    assert per_prompt.std > 2 * per_answer.std
    # close to the theory for means of prompt means: sd(prompt means) / sqrt(n_prompts)
    prompt_means = values.reshape(40, 8).mean(axis=1)
    assert per_prompt.std == pytest.approx(prompt_means.std() / np.sqrt(40), rel=0.15)
    # one answer per prompt: the same resampling as without groups
    single = aggregate_score(values[:40], seed=3, groups=[f"q{i}" for i in range(40)])
    assert single.std == pytest.approx(aggregate_score(values[:40], seed=3).std)
    with pytest.raises(ValueError, match="group labels"):
        aggregate_score([0.1, 0.2], groups=["a"])
