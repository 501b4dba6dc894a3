"""Notebooks run headless through papermill with small parameters and write what they promise."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
import yaml

from ruscarl_lib.notebook.reports import run_notebook

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_are_committed_clean_and_parameterised(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "clear outputs before committing"
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    # a cell longer than a screen is library code in the wrong place
    assert max(len(c.source.splitlines()) for c in code) <= 40
    # papermill reads every parameter (it skips, with a warning, a line holding a second "=",
    # even inside a comment; the run then reports the parameter as unknown)
    import ast

    import papermill

    assigned = [t.id for node in ast.parse(tagged[0].source).body if isinstance(node, (ast.Assign, ast.AnnAssign))
                for t in (node.targets if isinstance(node, ast.Assign) else [node.target])]
    assert sorted(papermill.inspect_notebook(str(path))) == sorted(assigned)


def _healthbench_jsonl(path: Path, n: int) -> None:
    """A few rows in the official HealthBench JSONL layout, written by hand."""
    with path.open("w") as f:
        for i in range(n):
            rubric = [
                {"criterion": f"Advises topic {i} item {j}.", "points": 5 - j,
                 "tags": ["level:example", f"axis:{'accuracy' if j % 2 else 'completeness'}"]}
                for j in range(4 + i)
            ] + [{"criterion": "Recommends an unsafe dose.", "points": -6, "tags": ["axis:accuracy"]}]
            f.write(json.dumps({
                "prompt_id": f"hb-{i}", "prompt": [{"role": "user", "content": f"Question {i}?"}],
                "rubrics": rubric, "example_tags": ["theme:hedging"],
                "ideal_completions_data": None, "canary": "x",
            }) + "\n")


def _errors(nb_path: Path) -> list:
    nb = nbformat.read(nb_path, as_version=4)
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]


def test_exploration_notebook_on_a_healthbench_file(tmp_path):
    data = tmp_path / "hb.jsonl"
    _healthbench_jsonl(data, 6)
    out_dir = tmp_path / "explore"
    executed = run_notebook("01_rubric_exploration", tmp_path / "01.ipynb", {
        "output_dir": str(out_dir), "data_path": str(data), "example_index": 2,
        "ratios": [0.0, 0.25, 1.0]}, progress=False)
    assert not _errors(executed)
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["n_examples"] == 6 and summary["example_shown"] == "hb-2"
    # example hb-2 has 6 + 1 = 7 criteria: round(7 * r) shown; ratio 0 adds no system message
    assert [p["n_shown"] for p in summary["scaffold_preview"]] == [0, 2, 7]
    assert [p["n_messages"] for p in summary["scaffold_preview"]] == [1, 2, 2]
    for name in ["overview.png", "per_example.csv", "per_criterion.csv", "tag_counts.csv", "params.yaml"]:
        assert (out_dir / name).stat().st_size > 0, name
    assert yaml.safe_load((out_dir / "params.yaml").read_text())["data"]["path"] == str(data)


def test_scaffold_notebook_writes_the_chosen_schedule(tmp_path):
    out_dir = tmp_path / "tune"
    executed = run_notebook("02_scaffold_tuning", tmp_path / "02.ipynb", {
        "output_dir": str(out_dir), "group_size": 4, "total_steps": 40, "step_decay": "power",
        "power": 3.0, "t0": 0.3, "intra_group": "binary", "binary_k": 1}, progress=False)
    assert not _errors(executed)
    chosen = yaml.safe_load((out_dir / "schedule.yaml").read_text())
    assert chosen["schedule_view"] == {"group_size": 4, "total_steps": 40}
    assert chosen["scaffold"]["step_decay"] == "power" and chosen["scaffold"]["binary_k"] == 1
    summary = json.loads((out_dir / "summary.json").read_text())
    # independent computation: only sample 0 is scaffolded, with (1 - t)^3, t = (s - 1) / 39
    expected = sum((1 - (s - 1) / 39) ** 3 for s in range(1, 41)) / (4 * 40)
    assert summary["mean_ratio"] == pytest.approx(expected)
    assert (out_dir / "schedule.png").stat().st_size > 0
    table = (out_dir / "schedule_table.csv").read_text()
    assert "shown of 12" in table


def test_demo_runs_both_notebooks_and_writes_one_report(tmp_path, capsys):
    from ruscarl_lib.cli import main

    assert main(["demo", "--suite", "foundation", "--out", str(tmp_path / "demo")]) == 0
    headline = json.loads(capsys.readouterr().out.split("\nReport:")[0])
    html = Path(headline["report"]).read_text()
    assert "01_rubric_exploration" in html and "02_scaffold_tuning" in html
    assert html.count("data:image/png;base64") >= 2
    assert headline["01_rubric_exploration"]["n_examples"] >= 10
    assert len(headline["notebooks"]) == 2
    # a page to share: summary first, code behind a toggle, no residue, figures with alt text
    assert html.index('id="headline"') < html.index("Notebook <code>01_rubric_exploration")
    assert 'id="ruscarl-show-code"' in html and "%|" not in html and str(ROOT) + "/" not in html
    assert "<img src=" not in html and html.count('<img alt="') >= 4
    for nb in headline["notebooks"]:  # every executed notebook also as its own page
        assert '<img alt="' in Path(nb).with_suffix(".html").read_text()
    # rerun keeps finished stages (resume) and still writes the report
    mtime = Path(headline["notebooks"][0]).stat().st_mtime
    assert main(["demo", "--suite", "foundation", "--out", str(tmp_path / "demo")]) == 0
    assert Path(headline["notebooks"][0]).stat().st_mtime == mtime


def test_exploration_notebook_on_healthbench_500(tmp_path, healthbench_500_path):
    out_dir = tmp_path / "hb500"
    executed = run_notebook("01_rubric_exploration", tmp_path / "01.ipynb", {
        "output_dir": str(out_dir), "data_path": str(healthbench_500_path), "example_index": 7},
        progress=False)
    assert not _errors(executed)
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["n_examples"] == 500 and summary["n_criteria"] == 5965
