"""The main job: the notebook suite executed headless on the embedded CPU data.

Each stage is one notebook with plain parameters; every stage writes its executed copy and a
`summary.json` under the demo folder, and the demo stitches the executed notebooks into one
HTML report. Stages whose executed copy already exists are kept unless `force` is set, so an
interrupted demo resumes where it stopped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruscarl_lib.paths import resolve_path
from ruscarl_lib.reports import echo, export_html, read_json, run_notebook


@dataclass
class Stage:
    notebook: str
    parameters: dict[str, Any] = field(default_factory=dict)


def demo_stages(out_dir: Path, params_file: str) -> list[Stage]:
    """The notebooks of the demo, in order, with the parameters each one gets."""
    return [
        Stage("01_rubric_exploration", {"params_file": params_file,
                                        "output_dir": str(out_dir / "01_rubric_exploration")}),
        Stage("02_scaffold_tuning", {"params_file": params_file,
                                     "output_dir": str(out_dir / "02_scaffold_tuning")}),
    ]


def run_demo(
    out_dir: str | Path = "outputs/demo",
    params_file: str = "params/default.yaml",
    *,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Execute every demo stage, write `report.html`, and return the headline numbers."""
    out_dir = resolve_path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    executed: list[Path] = []
    headline: dict[str, Any] = {}
    for stage in demo_stages(out_dir, params_file):
        target = out_dir / f"{stage.notebook}.ipynb"
        summary_file = Path(stage.parameters["output_dir"]) / "summary.json"
        if target.exists() and summary_file.exists() and not force:
            echo(f"[demo] {stage.notebook}: already done, kept ({target})")
        else:
            echo(f"[demo] running {stage.notebook} ...")
            t0 = time.perf_counter()
            run_notebook(stage.notebook, target, stage.parameters, progress=progress)
            echo(f"[demo] {stage.notebook} finished in {time.perf_counter() - t0:.1f}s")
        executed.append(target)
        headline[stage.notebook] = read_json(summary_file)
    report = export_html(executed, out_dir / "report.html", title="RuscaRL demo report")
    headline["report"] = str(report)
    headline["notebooks"] = [str(p) for p in executed]
    return headline
