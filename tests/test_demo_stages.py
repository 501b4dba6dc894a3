"""Demo stage reuse: a finished stage is kept only when its inputs are unchanged; `force`
reruns everything from scratch. Notebooks are replaced by a stand-in that writes a summary,
so this checks the bookkeeping, not the notebooks (test_demo_sandbox runs those)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import ruscarl_lib.demo as demo


@pytest.fixture
def fake_notebooks(monkeypatch):
    calls: list[tuple[str, dict]] = []
    outputs: dict[str, float] = {}  # notebook name -> value its summary reports

    def run_notebook(name, target, parameters, progress=True):
        calls.append((Path(target).stem, dict(parameters)))
        p = parameters
        folder = Path(p["output_dir"]) / p["run_name"] if "run_name" in p else Path(p["output_dir"])
        folder.mkdir(parents=True, exist_ok=True)
        if name == "00_sandbox_world":
            (folder / "sandbox_params.yaml").write_text(Path(p["params_file"]).read_text())
        (folder / "summary.json").write_text(json.dumps({"score": outputs.get(Path(target).stem, 0.5)}))
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_text("{}")
        return Path(target)

    monkeypatch.setattr(demo, "run_notebook", run_notebook)
    monkeypatch.setattr(demo, "export_html", lambda paths, html, title, summary=None: Path(html))
    monkeypatch.setattr(demo, "export_each", lambda paths: [])
    return calls, outputs


def _ran(calls):
    names = [name for name, _ in calls]
    calls.clear()
    return names


def test_stages_rerun_only_when_their_inputs_change(tmp_path, fake_notebooks):
    calls, outputs = fake_notebooks
    params = tmp_path / "sandbox.yaml"
    params.write_text("seed: 0\n")
    out = tmp_path / "demo"
    all_stages = [s.name for s in demo.demo_stages(out, str(params))]

    demo.run_demo(out, str(params), progress=False)
    assert _ran(calls) == all_stages
    demo.run_demo(out, str(params), progress=False)
    assert _ran(calls) == []  # nothing changed: everything kept

    params.write_text("seed: 1\n")  # the params file edited in place, same path
    demo.run_demo(out, str(params), progress=False)
    assert _ran(calls) == all_stages

    # only the RuscaRL run produced something new: its evaluation and the analysis rerun
    (out / "notebooks" / "03_train_ruscarl.ipynb").unlink()
    outputs["03_train_ruscarl"] = 0.9
    demo.run_demo(out, str(params), progress=False)
    assert _ran(calls) == ["03_train_ruscarl", "04_evaluate_ruscarl", "05_analysis"]
    # a rerun with changed inputs starts over: the training run afresh, the evaluation regraded
    demo.run_demo(out, str(params), progress=False, overrides={"03_train_baseline": {"learning_rate": 1e-3}})
    ran = {name: p for name, p in calls}
    assert list(ran) == ["03_train_baseline", "04_evaluate_baseline", "05_analysis"]
    assert ran["03_train_baseline"]["fresh"] is True and ran["04_evaluate_baseline"]["overwrite"] is True
    calls.clear()

    demo.run_demo(out, str(params), progress=False, force=True,
                  overrides={"03_train_baseline": {"learning_rate": 1e-3}})
    ran = dict(calls)
    assert list(ran) == all_stages
    assert ran["03_train_ruscarl"]["fresh"] is True and ran["04_evaluate_start"]["overwrite"] is True


def test_an_interrupted_stage_resumes_instead_of_starting_over(tmp_path, fake_notebooks):
    calls, _ = fake_notebooks
    params = tmp_path / "sandbox.yaml"
    params.write_text("seed: 0\n")
    out = tmp_path / "demo"
    demo.run_demo(out, str(params), progress=False)
    calls.clear()
    record = out / "notebooks" / "03_train_ruscarl.stage.json"
    state = json.loads(record.read_text())
    record.write_text(json.dumps({**state, "status": "running"}))  # died while training
    (out / "notebooks" / "03_train_ruscarl.ipynb").unlink()
    demo.run_demo(out, str(params), progress=False)
    ran = dict(calls)
    assert "fresh" not in ran["03_train_ruscarl"]  # same inputs: resume from its checkpoint
    assert "04_evaluate_ruscarl" not in ran  # its output (summary) did not change


def test_headline_reports_unclipped_scores_and_zero_variance_next_to_clipped():
    results = {"00_sandbox_world": {"unhinted_score": 0.0, "hinted_score": 0.7},
               "03_train_ruscarl": {"zero_var_frac": 0.4}, "03_train_baseline": {"zero_var_frac": 0.97},
               "04_evaluate_start": {"score": 0.0, "unclipped_score": -0.05},
               "04_evaluate_ruscarl": {"score": 0.4, "unclipped_score": 0.38},
               "04_evaluate_baseline": {"score": 0.0, "unclipped_score": -0.01}}
    h = demo.demo_headline(results)
    assert h["heldout_score"]["baseline"] == 0.0 and h["heldout_unclipped_score"]["baseline"] == -0.01
    assert h["train_zero_variance_frac"] == {"ruscarl": 0.4, "baseline": 0.97}
    assert h["ruscarl_minus_baseline"] == 0.4 and h["ruscarl_minus_baseline_unclipped"] == pytest.approx(0.39)


def test_healthbench_suite_starts_one_judge_only_when_a_grading_stage_runs(tmp_path, fake_notebooks, monkeypatch):
    """Stages 03 and 04 get the demo's judge address; it is not an input (a new port every
    start must not rerun finished stages), and no server starts when every stage is kept."""
    import contextlib

    calls, _ = fake_notebooks
    started = []

    @contextlib.contextmanager
    def fake_judge(params_file, out):
        class Server:
            base_url = f"http://127.0.0.1:{9000 + len(started)}/v1"
            startup_s = 1.0
        started.append(Server.base_url)
        yield Server()

    monkeypatch.setattr(demo, "demo_judge", fake_judge)
    params = tmp_path / "hb.yaml"
    params.write_text("seed: 0\n")
    out = tmp_path / "demo"
    stages = demo.demo_stages(out, str(params), suite="healthbench")
    assert [s.name for s in stages] == ["01_rubric_exploration", "02_scaffold_tuning", "03_train_ruscarl",
                                        "03_train_baseline", "04_evaluate_start", "04_evaluate_ruscarl",
                                        "04_evaluate_baseline", "05_analysis"]
    assert {s.name for s in stages if s.needs_judge} == {s.name for s in stages if s.name[:2] in ("03", "04")}

    headline = demo.run_demo(out, str(params), suite="healthbench", progress=False)
    ran = dict(calls)
    calls.clear()
    assert started == ["http://127.0.0.1:9000/v1"]  # one server for all stages
    assert all(ran[n]["judge_url"] == started[0] for n in ran if n[:2] in ("03", "04"))
    assert "judge_url" not in ran["01_rubric_exploration"] and "judge_url" not in ran["05_analysis"]
    assert headline["judge_server_startup_s"] == 1.0 and "start_hinted_score" not in headline

    demo.run_demo(out, str(params), suite="healthbench", progress=False)
    assert _ran(calls) == [] and len(started) == 1  # all kept: no server started

    (out / "notebooks" / "04_evaluate_start.ipynb").unlink()
    demo.run_demo(out, str(params), suite="healthbench", progress=False, judge_url="http://127.0.0.1:1/v1")
    assert calls == [("04_evaluate_start", calls[0][1])] and calls[0][1]["judge_url"] == "http://127.0.0.1:1/v1"
    assert len(started) == 1  # a given judge is used, none started
