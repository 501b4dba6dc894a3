"""One colour per meaning: polarity and the demo's arms look the same in every figure."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from ruscarl_lib.data import stats  # noqa: E402
from ruscarl_lib.analysis.figures import plot_eval_scores, plot_training_curves  # noqa: E402
from ruscarl_lib.evaluate.best_of_n import plot_best_of_n  # noqa: E402
from ruscarl_lib.data.read import load_sample_dataset  # noqa: E402
from ruscarl_lib.notebook.figures import ARM_COLORS, POLARITY_COLORS, arm_of, dataset_overview_figure, palette  # noqa: E402


def _color(handle) -> str:
    import numpy as np
    from matplotlib.lines import Line2D

    if isinstance(handle, Line2D):
        return mcolors.to_hex(handle.get_color())
    rgba = np.atleast_2d(handle.get_facecolor())
    rgba = rgba[0] if rgba.size else np.atleast_2d(handle.get_edgecolor())[0]  # error bars: lines only
    if rgba[3] == 0:  # an outline-only patch (histplot's step element)
        rgba = np.atleast_2d(handle.get_edgecolor())[0]
    return mcolors.to_hex(rgba)


def _legend_colors(ax) -> dict[str, str]:
    legend = ax.get_legend()
    return {t.get_text(): _color(h) for h, t in zip(legend.legend_handles, legend.get_texts())}


def test_polarity_has_one_colour_in_every_panel_of_the_overview():
    ex = load_sample_dataset()
    fig = dataset_overview_figure(stats.per_example_table(ex), stats.per_criterion_table(ex), stats.tag_counts(ex))
    axes = fig.axes
    for ax in (axes[1], axes[3], axes[5]):  # points by polarity, criterion length, criteria per axis
        colors = _legend_colors(ax)
        assert colors["negative"] == POLARITY_COLORS["negative"], (ax.get_title(), colors)
        assert colors["positive"] == POLARITY_COLORS["positive"], (ax.get_title(), colors)
    plt.close(fig)


def test_arms_keep_their_colour_across_figures_and_name_forms():
    assert arm_of("evals/baseline") == "baseline" and arm_of("runs/ruscarl/adapter") == "ruscarl"
    assert arm_of("ruscarl_baseline") == "baseline" and arm_of("t0=0.3") is None
    # the evaluation figure lists start first; the training curves have no start: same colours
    tags = pd.DataFrame([{"eval": e, "tag": "overall", "score": s, "ci_low": s - 0.1, "ci_high": s + 0.1}
                         for e, s in (("start", 0.0), ("baseline", 0.1), ("ruscarl", 0.5))])
    fig = plot_eval_scores(tags)
    assert _legend_colors(fig.axes[0]) == {k: ARM_COLORS[k] for k in ("start", "baseline", "ruscarl")}
    plt.close(fig)
    curves = pd.DataFrame([{"run": r, "metric": "reward_mean", "rl_step": s, "value": s * 0.1}
                           for r in ("baseline", "ruscarl") for s in range(3)])
    fig = plot_training_curves(curves)
    handles = fig.legends[0]
    got = {t.get_text(): _color(h) for h, t in zip(handles.legend_handles, handles.get_texts())}
    assert got == {"baseline": ARM_COLORS["baseline"], "ruscarl": ARM_COLORS["ruscarl"]}
    plt.close(fig)
    bon = pd.DataFrame([{"model": m, "n": n, "expected_best": 0.1 * n, "sem": 0.01, "n_prompts": 4}
                        for m in ("baseline", "start") for n in (1, 2, 4)])
    fig = plot_best_of_n(bon)
    assert _legend_colors(fig.axes[0]) == {"baseline": ARM_COLORS["baseline"], "start": ARM_COLORS["start"]}
    plt.close(fig)
    # names that are no arm get distinct colours, stable within the session
    other = palette(["t0=0.2", "t0=0.5"])
    assert len(set(other.values())) == 2 and palette(["t0=0.5"])["t0=0.5"] == other["t0=0.5"]
    assert not set(other.values()) & set(ARM_COLORS.values())
