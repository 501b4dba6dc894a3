"""The Best-of-N estimator equals the average over every N-subset, stays exact at M = 2048."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest

from ruscarl_lib.evaluate.best_of_n import (
    best_of_n_curve,
    best_of_n_curves,
    default_ns,
    expected_max,
    max_weights,
    plot_best_of_n,
)


def brute_force(scores, n):
    """Mean of max over all C(M, n) subsets of positions (ties kept as distinct samples)."""
    subsets = list(itertools.combinations(range(len(scores)), n))
    return sum(max(scores[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("seed", range(6))
def test_matches_enumeration_of_all_subsets(seed):
    rng = np.random.default_rng(seed)
    m = int(rng.integers(1, 10))
    scores = rng.normal(size=m).round(2).tolist()
    for n in range(1, m + 1):
        assert expected_max(scores, n) == pytest.approx(brute_force(scores, n), abs=1e-12)


def test_ties_and_negative_scores():
    scores = [0.5, 0.5, -0.2, 0.5, 1.0, -0.2, 0.0]
    for n in range(1, len(scores) + 1):
        assert expected_max(scores, n) == pytest.approx(brute_force(scores, n), abs=1e-12)
    assert expected_max([0.3] * 5, 3) == pytest.approx(0.3)


def test_n1_is_mean_and_n_m_is_max():
    rng = np.random.default_rng(1)
    scores = rng.uniform(-1, 1, size=37)
    assert expected_max(scores, 1) == pytest.approx(scores.mean())
    assert expected_max(scores, 37) == pytest.approx(scores.max())


def test_hand_computed_small_case():
    # subsets of {0, 1, 3} of size 2: max 1, 3, 3 -> 7/3
    assert expected_max([3, 0, 1], 2) == pytest.approx(7 / 3)


@pytest.mark.parametrize("n", [1, 2, 7, 64, 1000, 2047, 2048])
def test_weights_exact_for_m_2048(n):
    m = 2048
    w = max_weights(m, n)
    assert np.all(np.isfinite(w)) and np.all(w >= 0)
    assert w.sum() == pytest.approx(1.0, abs=1e-9)
    total = math.comb(m, n)
    for i in sorted({n, min(n + 1, m), (n + m) // 2, m}):
        exact = float(Fraction(math.comb(i - 1, n - 1), total))
        assert w[i - 1] == pytest.approx(exact, rel=1e-9, abs=1e-300)
    assert np.all(w[: n - 1] == 0)


def test_m_2048_is_monotone_and_bounded():
    rng = np.random.default_rng(2)
    scores = rng.uniform(size=2048)
    values = [expected_max(scores, n) for n in default_ns(2048)]
    assert all(b >= a - 1e-12 for a, b in zip(values, values[1:]))
    assert values[0] == pytest.approx(scores.mean()) and values[-1] == pytest.approx(scores.max())


def test_invalid_n_and_nan():
    with pytest.raises(ValueError):
        expected_max([1.0, 2.0], 3)
    with pytest.raises(ValueError):
        expected_max([1.0, 2.0], 0)
    with pytest.raises(ValueError):
        expected_max([1.0, float("nan")], 1)


def test_default_ns():
    assert default_ns(1) == [1]
    assert default_ns(8) == [1, 2, 4, 8]
    assert default_ns(12) == [1, 2, 4, 8, 12]


def _samples(rng, n_prompts, m, shift=0.0):
    return pd.DataFrame(
        [
            {"example_id": f"p{p}", "sample_index": k, "score": float(rng.uniform() + shift)}
            for p in range(n_prompts)
            for k in range(m)
        ]
    )


def test_curve_averages_prompts_and_drops_nan():
    rng = np.random.default_rng(3)
    df = _samples(rng, 4, 6)
    curve = best_of_n_curve(df)
    assert curve["n"].tolist() == [1, 2, 4, 6]
    for _, row in curve.iterrows():
        per_prompt = [brute_force(g["score"].tolist(), int(row.n)) for _, g in df.groupby("example_id")]
        assert row.expected_best == pytest.approx(np.mean(per_prompt))
        assert row["sem"] == pytest.approx(np.std(per_prompt, ddof=1) / 2)
        assert row.n_prompts == 4
    # a NaN (ungradable sample) shrinks that prompt's M: default Ns stop at the smallest M
    df.loc[0, "score"] = float("nan")
    curve = best_of_n_curve(df)
    assert curve["n"].tolist() == [1, 2, 4, 5]
    first = df[df.example_id == "p0"]["score"].dropna().tolist()
    assert len(first) == 5
    explicit = best_of_n_curve(df, ns=[6])
    assert explicit["n_prompts"].tolist() == [3]


def test_curves_for_several_models_and_plot():
    rng = np.random.default_rng(4)
    a, b = _samples(rng, 3, 8), _samples(rng, 3, 8, shift=0.5)
    curves = best_of_n_curves({"initial": a, "trained": b})
    assert set(curves["model"]) == {"initial", "trained"}
    assert len(curves) == 8
    long = pd.concat([a.assign(model="initial"), b.assign(model="trained")])
    pd.testing.assert_frame_equal(best_of_n_curves(long), curves)
    trained = curves[curves.model == "trained"]["expected_best"].to_numpy()
    initial = curves[curves.model == "initial"]["expected_best"].to_numpy()
    assert np.all(trained > initial)
    fig = plot_best_of_n(curves)
    assert len(fig.axes[0].lines) >= 2
    import matplotlib.pyplot as plt

    plt.close(fig)
