"""Figures the notebooks show: dataset statistics and scaffold schedules (seaborn/matplotlib).

Each function returns a matplotlib Figure so notebooks can display it and scripts can save it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from ruscarl_lib.scaffold.schedule import ScaffoldSchedule, expected_criteria_shown

sns.set_theme(style="whitegrid", context="notebook")

# --------------------------------------------------------------------------------------------
# One colour per meaning, in every figure of every notebook and report
# --------------------------------------------------------------------------------------------

#: Criterion polarity: what a criterion rewards (green) or penalises (red).
POLARITY_COLORS = {"positive": "#2ca02c", "negative": "#d62728", "unknown": "#7f7f7f"}
#: The demo's policies: the starting policy is the grey reference, RuscaRL blue, baseline orange.
ARM_COLORS = {"start": "#7f7f7f", "ruscarl": "#1f77b4", "baseline": "#ff7f0e"}
#: Other names (sweep points, further runs) take these, in order of first appearance.
_OTHER = ["#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#393b79", "#637939", "#843c39"]
_assigned: dict[str, str] = {}


def arm_of(name: str) -> str | None:
    """Which demo arm a run or evaluation name denotes (`evals/baseline`, `ruscarl`, ...), if any."""
    text = str(name).lower()
    last = text.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    if last in ARM_COLORS:
        return last
    for part in (last, text):  # the name itself first: `ruscarl/adapter` is the RuscaRL arm
        for arm in ("baseline", "start", "ruscarl"):  # "ruscarl_baseline" is the baseline
            if arm in part:
                return arm
    return None


def color_of(name: str) -> str:
    """The colour of a name: its polarity or arm colour, else a colour kept for the session."""
    key = str(name)
    if key.lower() in POLARITY_COLORS:
        return POLARITY_COLORS[key.lower()]
    arm = arm_of(key)
    if arm is not None:
        return ARM_COLORS[arm]
    if key not in _assigned:
        _assigned[key] = _OTHER[len(_assigned) % len(_OTHER)]
    return _assigned[key]


def palette(names) -> dict[str, str]:
    """{name: colour} for a seaborn `palette=` argument."""
    return {str(n): color_of(n) for n in dict.fromkeys(names)}


def _step_ticks(ax, total_steps: int, n_ticks: int = 8) -> None:
    ticks = np.unique(np.linspace(0, total_steps - 1, n_ticks).round().astype(int))
    ax.set_xticks(ticks + 0.5)
    ax.set_xticklabels(ticks + 1, rotation=0)


def schedule_figure(
    schedule: ScaffoldSchedule,
    group_size: int,
    total_steps: int,
    n_criteria_per_example: Sequence[int] | None = None,
) -> plt.Figure:
    """Decay curve, ratio heatmap per (sample, step) and, given rubric sizes, criteria shown."""
    grid = schedule.ratio_grid(group_size, total_steps)
    n_panels = 3 if n_criteria_per_example is not None else 2
    fig, axes = plt.subplots(1, n_panels, figsize=(6 * n_panels, 4.2))
    steps = np.arange(1, total_steps + 1)
    axes[0].plot(steps, schedule.decay_curve(total_steps), color="tab:blue")
    axes[0].set(xlabel="training step", ylabel="step decay", ylim=(-0.05, 1.05),
                title=f"step decay: {schedule.step_decay}")
    sns.heatmap(grid, ax=axes[1], vmin=0, vmax=1, cmap="viridis",
                cbar_kws={"label": "scaffold ratio"})
    axes[1].set(xlabel="training step", ylabel="sample index in group",
                title=f"ratio per (sample, step), intra-group: {schedule.intra_group}")
    _step_ticks(axes[1], total_steps)
    if n_criteria_per_example is not None:
        shown = expected_criteria_shown(n_criteria_per_example, schedule, group_size, total_steps)
        sns.heatmap(shown, ax=axes[2], cmap="magma", cbar_kws={"label": "criteria shown (mean)"})
        axes[2].set(xlabel="training step", ylabel="sample index in group",
                    title="expected criteria shown on this dataset")
        _step_ticks(axes[2], total_steps)
    fig.tight_layout()
    return fig


def dataset_overview_figure(
    per_example: pd.DataFrame, per_criterion: pd.DataFrame, tag_counts: pd.DataFrame, top_tags: int = 15
) -> plt.Figure:
    """Five panels: criteria per example, points by polarity, top tags, criterion length, turns."""
    fig, axes = plt.subplots(2, 3, figsize=(18, 9), layout="constrained")
    ax = axes.ravel()
    sns.histplot(per_example["n_criteria"], discrete=True, ax=ax[0])
    ax[0].set(title="criteria per example", xlabel="criteria")
    polarity = palette(sorted(per_criterion["polarity"].unique()))
    order = [p for p in POLARITY_COLORS if p in polarity]
    sns.countplot(data=per_criterion, x="points", hue="polarity", hue_order=order, palette=polarity,
                  ax=ax[1], dodge=False, saturation=1)
    ax[1].set(title="points by polarity", xlabel="points")
    top = tag_counts.sort_values("n_criteria", ascending=False).head(top_tags)
    sns.barplot(data=top, y="tag", x="n_criteria", ax=ax[2], color="#4c72b0", saturation=1)
    ax[2].set(title=f"top {len(top)} tags", xlabel="criteria carrying the tag", ylabel="")
    sns.histplot(data=per_criterion, x="n_words", hue="polarity", hue_order=order, palette=polarity,
                 ax=ax[3], element="step")
    ax[3].set(title="criterion length", xlabel="words")
    sns.countplot(x=per_example["n_turns"], ax=ax[4], color="#4c72b0", saturation=1)
    ax[4].set(title="turns per conversation", xlabel="non-system messages")
    by_axis = per_criterion.groupby(["axis", "polarity"]).size().reset_index(name="n")
    sns.barplot(data=by_axis, y="axis", x="n", hue="polarity", hue_order=order, palette=polarity,
                ax=ax[5], saturation=1)
    ax[5].set(title="criteria per axis", xlabel="criteria", ylabel="")
    return fig


def save_figure(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path
