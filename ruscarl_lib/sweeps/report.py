"""Collecting a sweep's metrics into one table, and its report: a summary figure and notebook,
with each point's mean and 95% interval over seeds (`sweeps.stats`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import pandas as pd

from ruscarl_lib.common.paths import (
    atomic_write_parquet,
    atomic_write_text,
)
from ruscarl_lib.sweeps.spec import SweepRun
from ruscarl_lib.sweeps.worker import DONE_MARKER, RUN_METRICS


__all__ = [
    "collect_metrics",
    "summary_figure",
]


def collect_metrics(root: str | Path, runs: Sequence[SweepRun]) -> pd.DataFrame:
    """One row per finished run: run_id, the varied settings, run seconds, then its metrics.

    Only runs with the DONE marker count; their metrics.json was complete before it was written.
    """
    root = Path(root)
    rows = []
    for run in runs:
        run_dir = root / run.run_id
        if not (run_dir / DONE_MARKER).exists():
            continue
        saved = json.loads((run_dir / RUN_METRICS).read_text())
        point = {"point": run.point_id} if run.point_id else {}
        rows.append({"run_id": run.run_id, **point, **run.settings, "seconds": saved["seconds"], **saved["metrics"]})
    return pd.DataFrame(rows)


def _parquet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """Columns mixing types (a metric that is a number in one run, text in another) become text."""
    out = frame.copy()
    for col in out.columns:
        if out[col].dtype == object:
            kinds = {type(v) for v in out[col] if v is not None and not (isinstance(v, float) and math.isnan(v))}
            if len(kinds) > 1 or (kinds and not kinds <= {str, bool}):
                out[col] = out[col].map(lambda v: None if v is None else str(v))
    return out


def write_tables(root: Path, metrics: pd.DataFrame, outcomes: pd.DataFrame) -> tuple[Path, Path]:
    parquet = atomic_write_parquet(root / "metrics.parquet", _parquet_safe(metrics))
    csv = atomic_write_text(root / "metrics.csv", metrics.to_csv(index=False))
    atomic_write_text(root / "runs.csv", outcomes.to_csv(index=False))
    return parquet, csv


def summary_figure(metrics: pd.DataFrame, varied: Sequence[str], metric_cols: Sequence[str] | None = None,
                   *, by_run: bool = False, max_panels: int = 6, ignore: Sequence[str] = ()):
    """One panel per numeric metric (at most `max_panels`); None when there is nothing to plot.

    A grid sweep plots each metric against its first varied key (hue: the second). A sweep of
    explicit points (`by_run`), or one that varies nothing, gets one bar per run instead, since
    its points do not share an axis; runs of one point at several seeds (a `point` column) share
    a bar, with seaborn's interval of the mean.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    skip = {"run_id", "point", "seconds", *varied, *ignore}
    if metric_cols is None:
        metric_cols = [c for c in metrics.columns if c not in skip and pd.api.types.is_numeric_dtype(metrics[c])
                       and not pd.api.types.is_bool_dtype(metrics[c])]
    metric_cols = [c for c in metric_cols if c in metrics.columns][:max_panels]
    if not metric_cols or metrics.empty:
        return None
    n = len(metric_cols)
    cols = min(3, n)
    data = metrics.copy()
    varied = [v for v in varied if v in data.columns]
    if by_run or not varied:
        height = max(3.0, 0.35 * (data["point"].nunique() if "point" in data else len(data)) + 1.2)
        fig, axes = plt.subplots(math.ceil(n / cols), cols, figsize=(5.2 * cols, height * math.ceil(n / cols)),
                                 squeeze=False)
        for ax, col in zip(axes.ravel(), metric_cols):
            sns.barplot(data=data, y="point" if "point" in data else "run_id", x=col, ax=ax, color="tab:blue")
            ax.set(title=col, xlabel="", ylabel="")
    else:
        fig, axes = plt.subplots(math.ceil(n / cols), cols, figsize=(5.2 * cols, 3.8 * math.ceil(n / cols)),
                                 squeeze=False)
        x, hue = varied[0], (varied[1] if len(varied) > 1 else None)
        data[x] = data[x].astype(str)
        if hue:
            data[hue] = data[hue].astype(str)
        for ax, col in zip(axes.ravel(), metric_cols):
            sns.pointplot(data=data, x=x, y=col, hue=hue, ax=ax, dodge=0.2 if hue else False)
            ax.set_title(col)
            ax.tick_params(axis="x", rotation=30)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


_SUMMARY_CELLS = [
    ("code", "sweep_dir = ''", ["parameters"]),
    ("code", """import json
from pathlib import Path
import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Markdown, display
from ruscarl_lib.sweeps.report import summary_figure

root = Path(sweep_dir)
info = json.loads((root / 'sweep.json').read_text())
metrics = pd.read_parquet(root / 'metrics.parquet')
runs = pd.read_csv(root / 'runs.csv').fillna({'error': ''})
display(Markdown(f"# Sweep `{info['name']}`\\n\\n{info['description']}\\n\\n"
                 f"Base params: `{info['base']}`; notebooks: {', '.join(info['notebooks'])}; "
                 f"{len(metrics)} of {len(runs)} runs finished."))""", []),
    ("markdown", "## Runs\nStatus of every run of this invocation (`skipped`: finished earlier).", []),
    ("code", "runs", []),
    ("markdown", "## Metrics\nOne row per finished run: the settings it varied, then what its notebooks reported.", []),
    ("code", "metrics", []),
    ("markdown", "## Over seeds\nWith a seed axis: each point's mean and 95% Student-t interval over its seeds, "
                 "and the orderings of points whose intervals do not overlap (beyond seed noise).", []),
    ("code", """from ruscarl_lib.common.paths import atomic_write_text
from ruscarl_lib.sweeps.stats import orderings_beyond_noise, seed_summary

if info.get('seeds') and not metrics.empty:
    point_keys = [k for k in info['varied'] if k != info['seed_key']]
    numeric = [c for c in metrics.columns if c not in {'run_id', 'point', 'seconds', *info['varied']}
               and pd.api.types.is_numeric_dtype(metrics[c]) and not pd.api.types.is_bool_dtype(metrics[c])]
    for metric in (info['report_metrics'] or numeric[:6]):
        table = seed_summary(metrics, metric, point_keys, seed_key=info['seed_key'])
        atomic_write_text(root / f"seeds_{metric.replace('/', '_')}.csv", table.to_csv(index=False))
        display(Markdown(f"### `{metric}`: mean and 95% t-interval over seeds {info['seeds']}"))
        display(table)
        beyond = orderings_beyond_noise(table)
        display(Markdown(f"{len(beyond)} of {len(table) * (len(table) - 1) // 2} orderings beyond noise "
                         "(intervals not overlapping):"))
        display(beyond)
else:
    display(Markdown("One seed per point: no intervals; add `seeds: [...]` to the sweep file."))""", []),
    ("code", """# over seeds: one mark per point (mean and its interval), not one per run
varied = [v for v in info['varied'] if not (info.get('seeds') and v == info.get('seed_key'))]
fig = summary_figure(metrics, varied, info['report_metrics'] or None, by_run=info['by_run'],
                     ignore=[info['seed_key']] if info.get('seeds') else [])
if fig is not None:
    fig.savefig(root / 'summary.png', dpi=110, bbox_inches='tight')
    plt.show()""", []),
]


def _summary_notebook(path: Path) -> Path:
    import nbformat

    nb = nbformat.v4.new_notebook()
    for kind, source, tags in _SUMMARY_CELLS:
        cell = nbformat.v4.new_code_cell(source) if kind == "code" else nbformat.v4.new_markdown_cell(source)
        if tags:
            cell.metadata["tags"] = tags
        nb.cells.append(cell)
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                   "language_info": {"name": "python"}}
    return atomic_write_text(path, nbformat.writes(nb))


def render_report(root: Path, title: str, progress: bool = False, *, sweep_file: str | Path | None = None,
                  wall_s: float | None = None) -> tuple[Path, Path]:
    """Execute the summary notebook on the collected tables and export it as report.html.

    The page opens with what was run (sweep file, base params, versions, machine, wall time),
    the metrics table and the summary figure; then the summary notebook.
    """
    from ruscarl_lib.notebook.reports import (
        export_html,
        relative_to_root,
        run_notebook,
        summary_html,
    )

    source = _summary_notebook(root / ".summary_source.ipynb")
    executed = run_notebook(source, root / "summary.ipynb", {"sweep_dir": str(root)}, progress=progress)
    info = json.loads((root / "sweep.json").read_text())
    metrics = pd.read_parquet(root / "metrics.parquet")
    shown = headline_metrics(metrics, info.get("varied", []), info.get("report_metrics") or None)
    what = {"sweep": info.get("name"), "file": relative_to_root(sweep_file) if sweep_file else "",
            "base params": relative_to_root(info.get("base")),
            "runs finished": f"{len(metrics)} of {len(info.get('run_ids', []))}",
            "wall time": f"{wall_s:.0f}s" if wall_s is not None else ""}
    summary = summary_html(what, shown, figures=[(root / "summary.png", f"{title}: metrics per run")],
                           note=info.get("description") or "")
    html = export_html([executed], root / "report.html", title=title, summary=summary)
    return executed, html


def headline_metrics(metrics: pd.DataFrame, varied: Sequence[str], metric_cols: Sequence[str] | None = None,
                     max_metrics: int = 6) -> pd.DataFrame:
    """The sweep's headline table: one row per run, its varied settings, then a few metrics
    (the sweep file's `report_metrics`, else the first numeric ones), numbers to 3 decimals."""
    if metrics.empty:
        return pd.DataFrame({"run_id": []}).set_index("run_id")
    skip = {"run_id", "seconds", *varied}
    if metric_cols is None:
        metric_cols = [c for c in metrics.columns if c not in skip and pd.api.types.is_numeric_dtype(metrics[c])
                       and not pd.api.types.is_bool_dtype(metrics[c])]
    cols = [c for c in varied if c in metrics.columns] + [c for c in metric_cols if c in metrics.columns][:max_metrics]
    table = metrics.set_index("run_id")[cols].copy()
    for c in table.columns:
        if pd.api.types.is_float_dtype(table[c]):
            table[c] = table[c].map(lambda v: "–" if pd.isna(v) else f"{v:.3f}")
    return table
