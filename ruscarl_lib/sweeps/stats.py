"""Seed statistics for sweeps: each point's mean and 95% interval over seeds, and which orderings
of points are beyond seed noise.

With three seeds a bootstrap has only ten distinct resamples, so the interval is Student's t
(mean +- t_{0.975, n-1} * sd / sqrt(n)), which assumes roughly normal seed-to-seed spread. An
ordering counts as beyond noise when the two points' intervals do not overlap: stricter than a
Welch test at 5%, so what it lists is safe to claim and what it omits may still be real.
"""

from __future__ import annotations

import math
from typing import Sequence

import pandas as pd

__all__ = ["mean_interval", "orderings_beyond_noise", "seed_summary", "t_cdf", "t_quantile"]


def t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t with integer `df` (closed form: Abramowitz & Stegun 26.7.3-4)."""
    if df < 1 or int(df) != df:
        raise ValueError(f"df must be a positive integer, got {df}")
    theta = math.atan2(t, math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2 == 1:  # A = (2/pi) * (theta + sin cos (1 + 2/3 cos^2 + ...)), last power cos^(df-3)
        series, term = 0.0, 1.0
        for k in range(1, (df - 1) // 2 + 1):
            series += term
            term *= c2 * (2 * k) / (2 * k + 1)
        a = 2 / math.pi * (theta + (s * math.cos(theta) * series if df > 1 else 0.0))
    else:  # A = sin * (1 + 1/2 cos^2 + 1.3/(2.4) cos^4 + ...), last power cos^(df-2)
        series, term = 0.0, 1.0
        for k in range(1, df // 2 + 1):
            series += term
            term *= c2 * (2 * k - 1) / (2 * k)
        a = s * series
    return 0.5 + a / 2  # a = P(-t < T < t) carries the sign of t


def t_quantile(p: float, df: int) -> float:
    """The t with t_cdf(t, df) = p, by bisection (monotone, so 200 halvings are plenty)."""
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p}")
    lo, hi = -1e6, 1e6
    for _ in range(200):
        mid = (lo + hi) / 2
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def mean_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float, float]:
    """(mean, sd, low, high); with one value the interval is unknown (NaN)."""
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(xs)
    if n == 0:
        return math.nan, math.nan, math.nan, math.nan
    mean = sum(xs) / n
    if n == 1:
        return mean, math.nan, math.nan, math.nan
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return mean, sd, mean - half, mean + half


def seed_summary(metrics: pd.DataFrame, metric: str, point_keys: Sequence[str], *, seed_key: str = "seed",
                 point_col: str = "point", level: float = 0.95) -> pd.DataFrame:
    """One row per point (runs sharing `point_col`): its settings, the seeds it has, and the
    metric's mean, sd and t-interval over them; best mean first."""
    if metric not in metrics.columns:
        raise KeyError(f"metric {metric!r} not in the sweep's table (columns: {list(metrics.columns)})")
    rows = []
    for point, group in metrics.groupby(point_col, sort=False):
        mean, sd, low, high = mean_interval(group[metric].tolist(), level)
        first = group.iloc[0]
        rows.append({point_col: point, **{k: first[k] for k in point_keys if k in group.columns},
                     "seeds": ",".join(str(s) for s in sorted(group[seed_key].tolist())) if seed_key in group else "",
                     "n": int(group[metric].notna().sum()), "mean": mean, "sd": sd,
                     "ci_low": low, "ci_high": high})
    out = pd.DataFrame(rows)
    return out.sort_values("mean", ascending=False, kind="stable").reset_index(drop=True) if len(out) else out


def orderings_beyond_noise(summary: pd.DataFrame, point_col: str = "point") -> pd.DataFrame:
    """Every pair of points whose intervals do not overlap: `better` > `worse` by `gap`."""
    rows = []
    recs = summary.to_dict("records")
    for i, a in enumerate(recs):
        for b in recs[i + 1:]:
            if any(math.isnan(x) for x in (a["ci_low"], a["ci_high"], b["ci_low"], b["ci_high"])):
                continue
            hi, lo = (a, b) if a["mean"] >= b["mean"] else (b, a)
            if hi["ci_low"] > lo["ci_high"]:
                rows.append({"better": hi[point_col], "worse": lo[point_col], "gap": hi["mean"] - lo["mean"],
                             "better_ci_low": hi["ci_low"], "worse_ci_high": lo["ci_high"]})
    return pd.DataFrame(rows, columns=["better", "worse", "gap", "better_ci_low", "worse_ci_high"])
