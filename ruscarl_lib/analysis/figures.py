"""Figures of the evaluation and analysis notebooks (04, 05), drawn from `analysis` tables.

Every function takes a table, returns a matplotlib Figure, or None when the table is empty
(a run that did not log what the figure needs); `publish` saves and shows a figure together
with the table's notes on what was missing, so a skipped plot is explained, never silent.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.ticker import MaxNLocator

from ruscarl_lib.analysis.criteria import STATUS_ORDER
from ruscarl_lib.analysis.notes import missing
from ruscarl_lib.notebook.figures import palette, save_figure

sns.set_theme(style="whitegrid", context="notebook")

CURVE_LABELS = {
    "reward_mean": "mean reward",
    "scaffold_ratio_mean": "mean scaffold ratio",
    "zero_var_frac": "zero-variance groups",
    "completion_tokens_mean": "completion tokens",
    "criteria_shown_mean": "criteria shown",
    "frac_scaffolded": "scaffolded rollouts",
    "kl": "KL to reference",
    "entropy": "entropy",
    "grad_norm": "gradient norm",
    "clipped_ratio": "truncated completions",
    "judge_failed_frac": "judge failures",
    "loss": "loss",
}

__all__ = [
    "plot_axis_met_rates",
    "plot_eval_lengths",
    "plot_eval_scores",
    "plot_length_vs_reward",
    "plot_shown_vs_hidden",
    "plot_training_curves",
    "plot_zero_variance",
    "publish",
]


def _grid(n: int, ncols: int, width: float = 5.0, height: float = 3.6):
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False,
                             layout="constrained")
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    return fig, axes.ravel()[:n]


def _palette(names: Sequence[str]) -> dict[str, str]:
    """Colours by name from the shared palette (plots.py): an arm or polarity has the same
    colour in every figure, and other runs keep theirs for the session."""
    return palette(names)


def _one_legend(fig, axes) -> None:
    """One legend for the figure (from the first panel that has one)."""
    handles, labels = [], []
    for ax in axes:
        if ax.get_legend() is not None:
            if not handles:
                handles, labels = ax.get_legend_handles_labels()
            ax.get_legend().remove()
    if handles:
        fig.legend(handles, labels, loc="outside right upper", frameon=False)


def plot_training_curves(curves: pd.DataFrame, metrics: Sequence[str] | None = None, ncols: int = 2,
                         title: str | None = None):
    """One panel per metric of a `training_curves` table, one line per run, against RL step."""
    if curves.empty:
        return None
    present = list(dict.fromkeys(curves["metric"]))
    metrics = [m for m in (metrics or present) if m in present]
    if not metrics:
        return None
    fig, axes = _grid(len(metrics), ncols)
    colors = _palette(list(dict.fromkeys(curves["run"])))
    for ax, metric in zip(axes, metrics):
        data = curves[curves["metric"] == metric]
        sns.lineplot(data=data, x="rl_step", y="value", hue="run", palette=colors, ax=ax,
                     marker="o" if data["rl_step"].nunique() < 30 else None)
        ax.set(xlabel="RL step", ylabel="", title=CURVE_LABELS.get(metric, metric))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _one_legend(fig, axes)
    if title:
        fig.suptitle(title)
    return fig


def plot_zero_variance(by_ratio: pd.DataFrame, curves: pd.DataFrame | None = None):
    """Left: fraction of zero-variance groups per scaffold-ratio bin, per run. Right (given
    curves with `zero_var_frac` and `scaffold_ratio_mean`): both over training."""
    if by_ratio.empty:
        return None
    both = curves is not None and {"zero_var_frac", "scaffold_ratio_mean"} <= set(curves.get("metric", []))
    fig, axes = _grid(2 if both else 1, 2, width=6.0)
    names = list(by_ratio["run"]) + (list(curves["run"]) if both else [])
    colors = _palette(list(dict.fromkeys(names)))
    order = [b for b in by_ratio["ratio_bin"].cat.categories if b in set(by_ratio["ratio_bin"])] \
        if isinstance(by_ratio["ratio_bin"].dtype, pd.CategoricalDtype) else None
    data = by_ratio.assign(ratio_bin=by_ratio["ratio_bin"].astype(str))
    sns.barplot(data=data, x="ratio_bin", y="zero_var_frac", hue="run", order=order, ax=axes[0],
                palette={k: v for k, v in colors.items() if k in set(by_ratio["run"])})
    axes[0].set(xlabel="group scaffold ratio (mean over its samples)", ylabel="zero-variance groups",
                ylim=(0, 1.05), title="groups with no reward spread (no gradient)")
    if both:
        data = curves[curves["metric"].isin(["zero_var_frac", "scaffold_ratio_mean"])]
        sns.lineplot(data=data, x="rl_step", y="value", hue="run", style="metric", palette=colors, ax=axes[1],
                     style_order=["zero_var_frac", "scaffold_ratio_mean"])
        axes[1].set(xlabel="RL step", ylabel="", ylim=(-0.05, 1.05),
                    title="zero-variance fraction (solid) and scaffold ratio (dashed)")
        axes[1].xaxis.set_major_locator(MaxNLocator(integer=True))
        sns.move_legend(axes[1], "upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    return fig


def plot_axis_met_rates(rates: pd.DataFrame, ncols: int = 3, title: str = "met rate of positive criteria per axis"):
    """One panel per rubric axis: met rate over training, one line per run."""
    if rates.empty:
        return None
    axes_names = sorted(rates["axis"].unique())
    fig, axes = _grid(len(axes_names), ncols, width=4.5)
    colors = _palette(list(dict.fromkeys(rates["run"])))
    for ax, name in zip(axes, axes_names):
        sns.lineplot(data=rates[rates["axis"] == name], x="step", y="met_rate", hue="run", palette=colors,
                     marker="o", ax=ax)
        ax.set(xlabel="RL step (bin start)", ylabel="met rate", ylim=(-0.05, 1.05), title=name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _one_legend(fig, axes)
    fig.suptitle(title)
    return fig


def _dodged_points(ax, table: pd.DataFrame, cat: str, order: Sequence[str], hue: str, value: str,
                   lo: str, hi: str, colors: dict, horizontal: bool = False) -> None:
    """Points with asymmetric error bars, categories on one axis, hue levels side by side."""
    levels = list(colors)
    width = 0.7 / max(1, len(levels))
    for j, level in enumerate(levels):
        part = table[table[hue] == level].set_index(cat).reindex(order)
        pos = np.arange(len(order)) - 0.35 + width * (j + 0.5)
        y = part[value].to_numpy(dtype=float)
        err = np.vstack([y - part[lo].to_numpy(dtype=float), part[hi].to_numpy(dtype=float) - y])
        err = np.where(np.isnan(err), 0, np.clip(err, 0, None))
        if horizontal:
            ax.errorbar(y, pos, xerr=err, fmt="o", color=colors[level], label=level, capsize=3)
        else:
            ax.errorbar(pos, y, yerr=err, fmt="o", color=colors[level], label=level, capsize=3)
    ticks = (ax.set_yticks, ax.set_yticklabels) if horizontal else (ax.set_xticks, ax.set_xticklabels)
    ticks[0](np.arange(len(order)))
    ticks[1](list(order))
    ax.grid(axis="y" if horizontal else "x", visible=False)


def plot_shown_vs_hidden(table: pd.DataFrame):
    """Met rate (95% Wilson interval) of criteria shown in the scaffold, hidden from a
    scaffolded rollout, and in unscaffolded rollouts; one panel per polarity."""
    if table.empty:
        return None
    polarities = [p for p in ("positive", "negative", "unknown") if p in set(table["polarity"])]
    fig, axes = _grid(len(polarities), 2, width=5.5)
    colors = _palette(list(dict.fromkeys(table["run"])))
    for ax, pol in zip(axes, polarities):
        part = table[table["polarity"] == pol]
        order = [s for s in STATUS_ORDER if s in set(part["status"])]
        _dodged_points(ax, part, "status", order, "run", "met_rate", "ci_low", "ci_high", colors)
        note = " (met = violation)" if pol == "negative" else ""
        ax.set(ylabel="met rate", ylim=(-0.05, 1.05), title=f"{pol} criteria{note}")
    axes[0].legend(title="run", frameon=False)
    return fig


def plot_length_vs_reward(points: pd.DataFrame, max_points: int = 4000, seed: int = 0):
    """Reward against completion length, one panel per run, coloured by training phase, with the
    phase means as large markers. (A subsample of `max_points` rollouts per run is drawn.)"""
    if points.empty:
        return None
    runs = list(dict.fromkeys(points["run"]))
    fig, axes = _grid(len(runs), 3, width=4.8)
    phases = list(dict.fromkeys(points.sort_values("phase_index")["phase"]))
    colors = dict(zip(phases, sns.color_palette("viridis", n_colors=len(phases))))
    for ax, run in zip(axes, runs):
        data = points[points["run"] == run]
        if len(data) > max_points:
            data = data.sample(max_points, random_state=seed)
        sns.scatterplot(data=data, x="completion_tokens", y="reward", hue="phase", palette=colors,
                        alpha=0.35, s=14, ax=ax, legend=ax is axes[0])
        means = points[points["run"] == run].groupby("phase", sort=False)[["completion_tokens", "reward"]].mean()
        for phase, row in means.iterrows():
            ax.scatter(row["completion_tokens"], row["reward"], s=160, color=colors[phase], edgecolor="black", zorder=3)
        ax.set(xlabel="completion tokens", ylabel="reward", title=run)
    _one_legend(fig, axes)
    return fig


def plot_eval_scores(tags: pd.DataFrame, title: str = "evaluation scores (95% interval)"):
    """Score per tag (overall first) with intervals, one colour per evaluation (`eval_tag_table`)."""
    if tags.empty:
        return None
    order = ["overall"] + sorted(t for t in tags["tag"].unique() if t != "overall")
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(order) + 1.5), layout="constrained")
    colors = _palette(list(dict.fromkeys(tags["eval"])))
    _dodged_points(ax, tags, "tag", order, "eval", "score", "ci_low", "ci_high", colors, horizontal=True)
    ax.invert_yaxis()
    ax.set(xlabel="score (clipped mean)", xlim=(-0.02, 1.02), title=title)
    ax.legend(title="evaluation", frameon=False, loc="best")
    return fig


def plot_eval_lengths(scores: pd.DataFrame, title: str = ""):
    """Response lengths of one evaluation: histogram, and score against length."""
    if scores.empty or "n_tokens" not in scores:
        return None
    fig, axes = _grid(2, 2, width=5.0)
    sns.histplot(scores["n_tokens"], ax=axes[0], discrete=scores["n_tokens"].nunique() < 40)
    axes[0].set(xlabel="response tokens", title="response length")
    sns.scatterplot(data=scores, x="n_tokens", y="score", alpha=0.5, ax=axes[1])
    axes[1].set(xlabel="response tokens", ylabel="rubric score (unclipped)", title="score against length")
    if title:
        fig.suptitle(title)
    return fig


def publish(fig, path: str | Path | None, *tables: pd.DataFrame) -> None:
    """Save `fig` (if any) to `path`, display it once, and say what the tables left out.

    Returns nothing, so that a notebook cell ending in `publish(...)` shows only the figure.
    """
    notes = [n for t in tables for n in missing(t)]
    try:
        from IPython.display import Markdown, display
    except ImportError:  # pragma: no cover - IPython ships with the notebook stack
        display = None
    if display is not None and notes:
        head = "**Figure skipped** (nothing to draw)." if fig is None else "**Partial:**"
        display(Markdown(head + "\n" + "\n".join(f"- {n}" for n in notes)))
    elif display is not None and fig is None:
        display(Markdown("**Figure skipped:** its table is empty."))
    if fig is None:
        return
    if path is not None:
        save_figure(fig, path)
    if display is not None:
        display(fig)
    plt.close(fig)
