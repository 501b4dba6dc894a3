"""Interactive views for JupyterLab (ipywidgets) and the plain renderings they share.

Papermill cannot drive widgets, so every widget here only changes what is shown or writes a
params file; headless runs call the same rendering functions with the notebook's parameters.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from ruscarl_lib.params import Params, save_params
from ruscarl_lib.data.rubric import RubricExample
from ruscarl_lib.scaffold.schedule import ScaffoldSchedule
from ruscarl_lib.scaffold.render import scaffold_example


def has_live_frontend() -> bool:
    """True inside a kernel with a connected frontend (JupyterLab), False under papermill.

    `reports.run_notebook` marks its kernels with RUSCARL_HEADLESS=1. Widgets are not even
    created headless: nobody can move them, and Output widgets driven by a kernel without a
    frontend have hung papermill runs here.
    """
    import os

    if os.environ.get("RUSCARL_HEADLESS"):
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and shell.__class__.__name__ == "ZMQInteractiveShell"


def _headless_note(what: str):
    from IPython.display import Markdown

    return Markdown(f"*{what}: interactive; open this notebook in JupyterLab to use it.*")


def messages_markdown(messages: Sequence[dict]) -> str:
    """A conversation as Markdown, one block per message (content HTML-escaped)."""
    parts = []
    for m in messages:
        body = html.escape(m["content"]).replace("\n", "  \n")
        parts.append(f"**{m['role']}**  \n{body}")
    return "\n\n---\n\n".join(parts)


def rubric_frame(example: RubricExample, shown: Sequence[int] = ()) -> pd.DataFrame:
    """The rubric as a table; `shown` marks the criteria a scaffold revealed."""
    shown_set = set(shown)
    return pd.DataFrame(
        {
            "points": [c.points for c in example.rubric],
            "criterion": [c.text for c in example.rubric],
            "tags": [", ".join(c.tags) for c in example.rubric],
            "in scaffold": [i in shown_set for i in range(len(example.rubric))],
        }
    )


def scaffold_preview(
    example: RubricExample, ratios: Sequence[float], params: Params, step: int = 1
) -> list[tuple[float, list[int], list[dict]]]:
    """The scaffolded prompt of one example at several ratios: (ratio, shown, messages)."""
    out = []
    for i, ratio in enumerate(ratios):
        sp = scaffold_example(
            example, float(ratio), seed=params.scaffold.seed, step=step, group_position=i,
            show_points=params.scaffold.show_points, warn_no_reveal=params.scaffold.warn_no_reveal,
        )
        out.append((float(ratio), list(sp.shown), sp.messages))
    return out


def example_browser(examples: Sequence[RubricExample], params: Params):
    """Slider over examples plus a ratio slider showing the scaffolded prompt live."""
    if not has_live_frontend():
        return _headless_note("Example browser")
    import ipywidgets as w
    from IPython.display import Markdown, display

    index = w.IntSlider(0, 0, max(len(examples) - 1, 0), description="example")
    ratio = w.FloatSlider(0.5, min=0, max=1, step=0.05, description="ratio")
    out = w.Output()

    def redraw(*_):
        out.clear_output(wait=True)
        ex = examples[index.value]
        [(r, shown, msgs)] = scaffold_preview(ex, [ratio.value], params)
        with out:
            display(Markdown(f"### `{ex.id}`  \nexample tags: {', '.join(ex.tags) or '-'}"))
            display(rubric_frame(ex, shown))
            display(Markdown(f"#### Prompt at ratio {r:.2f} ({len(shown)} criteria shown)"))
            display(Markdown(messages_markdown(msgs)))

    index.observe(redraw, "value")
    ratio.observe(redraw, "value")
    redraw()
    box = w.VBox([w.HBox([index, ratio]), out])
    box.add_class("ruscarl-example-browser")  # a handle for the browser tests
    return box


def round_to_step(value: float, step: float) -> float:
    """`value` on the grid of `step`, with no more decimals than the step has.

    Slider values arrive as binary floats (0.30000000000000004, 1.9999999999999998); a params
    file should say what the control showed.
    """
    from decimal import Decimal

    if step <= 0:
        return float(value)
    decimals = max(0, -Decimal(repr(float(step))).normalize().as_tuple().exponent)
    return float(round(round(value / step) * step, decimals))


def control_value(control):
    """A widget's value as a params file should store it (float sliders rounded to their step)."""
    value = control.value
    cls = type(control).__name__
    if cls == "FloatLogSlider":
        # the step is in the exponent (125.89... is 10**2.1): keep three significant figures
        return float(f"{value:.3g}")
    if cls == "FloatSlider":
        return round_to_step(value, control.step)
    return value


def schedule_tuner(
    params: Params,
    n_criteria_per_example: Sequence[int],
    save_path: str | Path,
    draw: Callable | None = None,
):
    """Controls for the schedule; redraws the heatmaps and writes the choice to a params YAML."""
    if not has_live_frontend():
        return _headless_note("Schedule tuner")
    import ipywidgets as w
    import matplotlib.pyplot as plt
    from IPython.display import HTML, display

    from ruscarl_lib.notebook.figures import schedule_figure

    draw = draw or schedule_figure
    s, v = params.scaffold, params.schedule_view
    controls = {
        "group_size": w.IntSlider(v.group_size, min=2, max=32, description="G"),
        "total_steps": w.IntSlider(v.total_steps, min=10, max=1000, step=10, description="steps"),
        "alpha": w.FloatLogSlider(s.alpha, base=10, min=0, max=3, description="alpha"),
        "t0": w.FloatSlider(s.t0, min=0, max=1, step=0.01, description="t0"),
        "step_decay": w.Dropdown(options=["sigmoid", "constant", "linear", "power"],
                                 value=s.step_decay, description="decay"),
        "power": w.FloatSlider(s.power, min=0.5, max=5, step=0.5, description="power n"),
        "intra_group": w.Dropdown(options=["linear", "binary"], value=s.intra_group,
                                  description="intra-group"),
        "binary_k": w.IntSlider(s.binary_k if s.binary_k is not None else v.group_size // 2,
                                min=0, max=32, description="binary k"),
    }
    save = w.Button(description="write params", button_style="success", icon="save")
    status = w.HTML()
    out = w.Output()
    out.add_class("ruscarl-schedule-view")

    def current() -> Params:
        c = {k: control_value(c) for k, c in controls.items()}
        chosen = params.model_copy(deep=True)
        chosen.schedule_view.group_size = c["group_size"]
        chosen.schedule_view.total_steps = c["total_steps"]
        for key in ("alpha", "t0", "step_decay", "power", "intra_group"):
            setattr(chosen.scaffold, key, c[key])
        chosen.scaffold.binary_k = min(c["binary_k"], c["group_size"]) if c["intra_group"] == "binary" else None
        return chosen

    def redraw(*_):
        chosen = current()
        out.clear_output(wait=True)
        sv, sc = chosen.schedule_view, chosen.scaffold
        with out:
            fig = draw(ScaffoldSchedule.from_params(sc), sv.group_size, sv.total_steps, n_criteria_per_example)
            display(HTML(f'<div class="ruscarl-schedule-caption">drawn for G={sv.group_size}, '
                         f'{sv.total_steps} steps, {sc.step_decay} decay, alpha={sc.alpha:g}, t0={sc.t0:g}, '
                         f'power={sc.power:g}, intra-group {sc.intra_group}</div>'))
            display(fig)
            plt.close(fig)

    def on_save(_):
        path = save_params(current(), save_path)
        status.value = f"wrote <code>{html.escape(str(path))}</code>"

    for c in controls.values():
        c.observe(redraw, "value")
    save.on_click(on_save)
    redraw()
    rows = list(controls.values())
    return w.VBox([w.HBox(rows[:4]), w.HBox(rows[4:]), w.HBox([save, status]), out])
