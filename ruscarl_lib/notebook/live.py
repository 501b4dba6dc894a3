"""Watching a training run from a notebook: live curves, group tables, the first group's prompts.

`LiveTraining` is both a transformers TrainerCallback (it receives every logged metric) and a
rollout sink (it receives every RL step's rollouts), so one object feeds the notebook's view.
In JupyterLab it redraws inside an ipywidgets Output; under papermill (no live frontend) it
prints group tables into the cell output as they come and draws the curves once at the end.

No transformers import here: the training notebook imports this module before the backend is
known, and Unsloth must be imported before transformers. `LiveTraining` is therefore a
duck-typed TrainerCallback: the events it does not handle are no-ops.
"""

from __future__ import annotations

from typing import Any, Sequence

import matplotlib.pyplot as plt
import pandas as pd

from ruscarl_lib.data.rubric import RubricExample
from ruscarl_lib.notebook.widgets import has_live_frontend
from ruscarl_lib.params import Params
from ruscarl_lib.scaffold.render import scaffold_example
from ruscarl_lib.scaffold.schedule import ScaffoldSchedule

#: Curves drawn live: (metric logged by the trainer, panel title).
LIVE_CURVES = (
    ("reward", "mean reward"),
    ("frac_reward_zero_std", "zero-variance groups"),
    ("scaffold/ratio_mean", "mean scaffold ratio"),
    ("scaffold/criteria_shown_mean", "criteria shown"),
)


def _no_event(*args: Any, **kwargs: Any) -> None:
    return None


def first_group_prompts(example: RubricExample, params: Params) -> pd.DataFrame:
    """The prompts every sample of the first group gets at step 1 (what the policy sees)."""
    schedule = ScaffoldSchedule.from_params(params.scaffold)
    g, total = params.train.group_size, params.train.max_steps
    rows = []
    for i in range(g):
        ratio = schedule.ratio(i, g, 1, total)
        sp = scaffold_example(example, ratio, seed=params.scaffold.seed, step=1, group_position=i,
                              show_points=params.scaffold.show_points,
                              warn_no_reveal=params.scaffold.warn_no_reveal)
        system = sp.messages[0]["content"] if sp.shown else "(clean prompt, no scaffold)"
        rows.append({"sample": i, "ratio": round(ratio, 3), "criteria shown": len(sp.shown),
                     "system message": system})
    return pd.DataFrame(rows)


def group_table(records: Sequence[dict[str, Any]], group: int = 0, max_chars: int = 160) -> pd.DataFrame:
    """One group's rollouts of an RL step: ratio, shown criteria, completion, reward."""
    rows = [r for r in records if r.get("group") == group]
    return pd.DataFrame([{
        "sample": r["group_position"], "ratio": round(r["scaffold_ratio"], 3), "shown": r["n_shown"],
        "reward": round(r["reward"], 3),
        "completion": (r["completion"] or "")[:max_chars].replace("\n", " "),
    } for r in sorted(rows, key=lambda r: r["group_position"])])


def curves_figure(history: pd.DataFrame) -> plt.Figure:
    """Reward, zero-variance share and scaffold curves against the RL step."""
    fig, axes = plt.subplots(1, len(LIVE_CURVES), figsize=(4.2 * len(LIVE_CURVES), 3.2))
    for ax, (key, title) in zip(axes, LIVE_CURVES):
        if key in history and history[key].notna().any():
            ax.plot(history["rl_step"], history[key], marker=".", lw=1)
        ax.set(title=title, xlabel="RL step")
    fig.tight_layout()
    return fig


class LiveTraining:
    """Collects logs and rollouts; shows curves and a group table every `table_every` steps."""

    def __getattr__(self, name: str):
        # every other TrainerCallback event (on_train_begin, on_step_end, ...) does nothing;
        # transformers' CallbackHandler calls `getattr(callback, event)(args, state, control, ...)`
        if name.startswith("on_"):
            return _no_event
        raise AttributeError(name)

    def __init__(self, table_every: int = 5, interactive: bool | None = None) -> None:
        self.table_every = max(1, table_every)
        self.logs: list[dict[str, Any]] = []
        self.tables: dict[int, pd.DataFrame] = {}
        self.interactive = has_live_frontend() if interactive is None else interactive
        self.output = None
        if self.interactive:
            import ipywidgets as w

            self.output = w.Output()
            self.output.add_class("ruscarl-live")

    # -- TrainerCallback -------------------------------------------------------------------------
    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs and "reward" in logs:
            self.logs.append({"rl_step": logs.get("rl_step", state.global_step), **logs})
            if self.output is not None:
                self._redraw()

    # -- rollout sink ------------------------------------------------------------------------------
    def __call__(self, rl_step: int, records: list[dict[str, Any]]) -> None:
        if rl_step == 1 or rl_step % self.table_every == 0:
            table = group_table(records)
            self.tables[rl_step] = table
            if self.output is None:
                from IPython.display import Markdown, display

                display(Markdown(f"**RL step {rl_step}**: group 0 "
                                 f"(mean reward {table['reward'].mean():.3f})"), table)
            else:
                self._redraw()

    # -- views -------------------------------------------------------------------------------------
    @property
    def history(self) -> pd.DataFrame:
        return pd.DataFrame(self.logs)

    def figure(self) -> plt.Figure:
        return curves_figure(self.history)

    def _redraw(self) -> None:
        from IPython.display import Markdown, display

        self.output.clear_output(wait=True)
        with self.output:
            if self.logs:
                fig = self.figure()
                display(Markdown(f"curves of {len(self.logs)} logged steps"))
                display(fig)
                plt.close(fig)
            if self.tables:
                step = max(self.tables)
                display(Markdown(f"**RL step {step}**: group 0"), self.tables[step])
