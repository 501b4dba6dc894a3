"""Best-of-N: how good is the best of N sampled answers, estimated from M >= N samples.

Drawing one random N-subset of the M samples per prompt gives a noisy number. The exact
expectation over all C(M, N) subsets is cheap instead: sort the M scores ascending; the i-th
smallest (1-based) is the maximum of a uniformly drawn N-subset with probability

    P(i) = C(i - 1, N - 1) / C(M, N)        (zero for i < N)

so E[max] = sum_i P(i) x_(i). Ties do not matter: any tie order gives the same sum. The
binomials are evaluated as log-gamma differences, so M in the thousands (the paper goes to
2048) neither overflows nor loses precision. The estimate is unbiased for the best-of-N score
of the model on that prompt; averaging over prompts gives the curve.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = [
    "best_of_n_curve",
    "best_of_n_curves",
    "default_ns",
    "expected_max",
    "max_weights",
    "plot_best_of_n",
]


def _log_gamma_table(m: int) -> np.ndarray:
    """lgamma(k) for k = 0 .. m + 1 (index k); lgamma(0) is unused and set to +inf."""
    table = np.empty(m + 2)
    table[0] = math.inf
    table[1:] = [math.lgamma(k) for k in range(1, m + 2)]
    return table


def max_weights(m: int, n: int) -> np.ndarray:
    """P(the i-th smallest of m values is the max of a random n-subset), for i = 1 .. m."""
    if not 1 <= n <= m:
        raise ValueError(f"need 1 <= n <= m, got n={n}, m={m}")
    lg = _log_gamma_table(m)
    i = np.arange(n, m + 1)
    # log C(i-1, n-1) = lgamma(i) - lgamma(n) - lgamma(i-n+1); log C(m, n) likewise
    log_num = lg[i] - lg[n] - lg[i - n + 1]
    log_den = lg[m + 1] - lg[n + 1] - lg[m - n + 1]
    weights = np.zeros(m)
    weights[n - 1:] = np.exp(log_num - log_den)
    return weights


def expected_max(scores: Sequence[float] | np.ndarray, n: int) -> float:
    """E[max of a uniformly random n-subset, without replacement] of `scores`, exactly."""
    x = np.sort(np.asarray(scores, dtype=np.float64))
    if np.isnan(x).any():
        raise ValueError("scores contain NaN; drop ungradable samples first")
    return float(max_weights(x.size, n) @ x)


def default_ns(m: int) -> list[int]:
    """1, 2, 4, ... up to m, with m itself appended when it is not a power of two."""
    if m < 1:
        return []
    ns = [1 << k for k in range(int(math.log2(m)) + 1)]
    if ns[-1] != m:
        ns.append(m)
    return ns


def best_of_n_curve(
    samples: pd.DataFrame,
    *,
    prompt_col: str = "example_id",
    score_col: str = "score",
    ns: Sequence[int] | None = None,
) -> pd.DataFrame:
    """Expected best-of-N score averaged over prompts, one row per N.

    `samples` has one row per sampled response. NaN scores (ungradable responses) are dropped,
    so a prompt contributes to every N up to its number of valid samples; `n_prompts` says how
    many prompts each point averages. Default Ns run up to the smallest per-prompt sample
    count, so every point covers the same prompts. `sem` is the standard error over prompts.
    """
    valid = samples[[prompt_col, score_col]].dropna(subset=[score_col])
    groups = [g[score_col].to_numpy(dtype=np.float64) for _, g in valid.groupby(prompt_col, sort=False)]
    columns = ["n", "expected_best", "sem", "n_prompts"]
    if not groups:
        return pd.DataFrame(columns=columns)
    if ns is None:
        ns = default_ns(min(g.size for g in groups))
    sorted_groups = [np.sort(g) for g in groups]
    rows = []
    for n in ns:
        per_prompt = [float(max_weights(g.size, n) @ g) for g in sorted_groups if g.size >= n]
        if not per_prompt:
            continue
        vals = np.asarray(per_prompt)
        sem = float(vals.std(ddof=1) / math.sqrt(vals.size)) if vals.size > 1 else float("nan")
        rows.append({"n": int(n), "expected_best": float(vals.mean()), "sem": sem, "n_prompts": int(vals.size)})
    return pd.DataFrame(rows, columns=columns)


def best_of_n_curves(
    samples: pd.DataFrame | Mapping[str, pd.DataFrame],
    *,
    model_col: str = "model",
    prompt_col: str = "example_id",
    score_col: str = "score",
    ns: Sequence[int] | None = None,
) -> pd.DataFrame:
    """Curves of several models in one long table (columns: model, n, expected_best, ...).

    Pass either one table with a `model_col` column or a mapping from model label to table.
    """
    if isinstance(samples, pd.DataFrame):
        frames = {str(k): g for k, g in samples.groupby(model_col, sort=False)}
    else:
        frames = dict(samples)
    parts = []
    for label, frame in frames.items():
        curve = best_of_n_curve(frame, prompt_col=prompt_col, score_col=score_col, ns=ns)
        curve.insert(0, "model", label)
        parts.append(curve)
    if not parts:
        return pd.DataFrame(columns=["model", "n", "expected_best", "sem", "n_prompts"])
    return pd.concat(parts, ignore_index=True)


def plot_best_of_n(curves: pd.DataFrame, ax=None, title: str = "Best-of-N"):
    """Expected best score against N (log2 axis), one line per model, with +-1 sem bands."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    from ruscarl_lib.notebook.figures import palette

    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 4.2))
    colors = palette(curves["model"])
    sns.lineplot(data=curves, x="n", y="expected_best", hue="model", marker="o", ax=ax, palette=colors)
    for label, g in curves.groupby("model", sort=False):
        g = g.sort_values("n")
        if g["sem"].notna().any():
            ax.fill_between(g["n"], g["expected_best"] - g["sem"], g["expected_best"] + g["sem"], alpha=0.15,
                            color=colors[str(label)])
    ax.set_xscale("log", base=2)
    ns = sorted(curves["n"].unique())
    ax.set_xticks(ns)
    ax.set_xticklabels([str(n) for n in ns])
    ax.set(xlabel="N (samples)", ylabel="expected best score", title=title)
    return ax.figure
