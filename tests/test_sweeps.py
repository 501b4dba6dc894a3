"""Sweeps: expansion and run ids, a two-point sweep end to end, failures, kills and resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import kill_sweep, write_tiny_notebook
from ruscarl_lib.params import ParamsError
from ruscarl_lib.sweeps.worker import DONE_MARKER
from ruscarl_lib.sweeps.report import collect_metrics
from ruscarl_lib.sweeps.spec import expand_runs, load_sweep
from ruscarl_lib.sweeps.run import main, run_sweep

ROOT = Path(__file__).resolve().parents[1]

PARAMETERS = "params_file = ''\noutput_dir = ''\nfail_flag = ''\nhang_flag = ''"
BODY = """\
import json, os, time
from pathlib import Path
import yaml
from ruscarl_lib.notebook.reports import write_json

p = yaml.safe_load(open(params_file))
alpha = p['scaffold']['alpha']
out = Path(output_dir)
out.mkdir(parents=True, exist_ok=True)
tag = f"_{alpha:g}"
if hang_flag and os.path.exists(hang_flag + tag):
    (out / 'started').write_text(str(os.getpid()))
    while os.path.exists(hang_flag + tag):
        time.sleep(0.1)
    raise SystemExit('released')
if fail_flag and os.path.exists(fail_flag + tag):
    raise RuntimeError('planned failure')
write_json(out / 'summary.json', {
    'alpha': alpha, 'score': alpha / 100, 'run_name': p['output']['run_name'],
    'nested': {'t0': p['scaffold']['t0']}, 'curve': [1, 2, 3]})
"""


def _notebook(path: Path) -> Path:
    return write_tiny_notebook(path, PARAMETERS, BODY)


@pytest.fixture()
def sweep(tmp_path):
    """A two-point sweep over scaffold.alpha with a throwaway notebook; returns (file, flags dir)."""
    (tmp_path / "base.yaml").write_text("# base\nscaffold:\n  t0: 0.3\n")
    nb = _notebook(tmp_path / "tiny.ipynb")
    flags = tmp_path / "flags"
    flags.mkdir()
    spec = {
        "name": "tiny", "description": "two alphas", "base": "base.yaml", "notebooks": [str(nb)],
        "grid": {"scaffold.alpha": [50.0, 100.0]},
        "parameters": {"fail_flag": str(flags / "fail"), "hang_flag": str(flags / "hang")},
        "max_parallel": 2,
    }
    path = tmp_path / "sweep_tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path, flags


def _flag(tmp_path):
    return tmp_path / "flags" / "hang"


def _ids(path):
    spec, folder = load_sweep(path)
    return [r.run_id for r in expand_runs(spec, folder)]


def test_expansion_run_ids_and_validation(tmp_path, sweep):
    path, _ = sweep
    ids = _ids(path)
    assert len(ids) == 2 and ids == _ids(path)
    assert ids[0].startswith("alpha=50-") and ids[1].startswith("alpha=100-") and len(ids[0].split("-")[-1]) == 8
    spec = yaml.safe_load(path.read_text())
    # a comment in the base file changes nothing; a value does
    (tmp_path / "base.yaml").write_text("# another comment\nscaffold:\n  t0: 0.3\n")
    assert _ids(path) == ids
    (tmp_path / "base.yaml").write_text("scaffold:\n  t0: 0.4\n")
    assert _ids(path)[0] != ids[0]
    # grid plus points (union), notebook.* keys, duplicates dropped
    spec.update(points=[{"scaffold.enabled": False}, {"scaffold.alpha": 50.0}, {"notebook.hang_flag": "x"}])
    path.write_text(yaml.safe_dump(spec))
    loaded, folder = load_sweep(path)
    runs = expand_runs(loaded, folder)
    assert len(runs) == 4
    assert runs[2].run_id.startswith("enabled=false-")
    # every row carries the effective value of every varied key, also where the point left it alone
    assert runs[2].settings == {"scaffold.alpha": 125.0, "scaffold.enabled": False, "notebook.hang_flag": str(_flag(tmp_path))}
    assert runs[3].notebook_parameters["hang_flag"] == "x" and "notebook.hang_flag" not in runs[3].overrides
    # a point that restates the base value is the same run as the base itself
    same = {**spec, "grid": {}, "points": [{}, {"scaffold.t0": 0.4}]}  # base says 0.4 by now
    path.write_text(yaml.safe_dump(same))
    assert len(_ids(path)) == 1
    spec.update(combine="product", points=[{"scaffold.t0": 0.1}, {"scaffold.t0": 0.2}])
    path.write_text(yaml.safe_dump(spec))
    assert len(_ids(path)) == 4 and _ids(path)[0].startswith("t0=0.1_alpha=50-")
    # a typo in a key fails before anything runs, as do unknown sweep keys
    spec.update(points=[{"scaffold.alfa": 3}])
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ParamsError, match="alfa"):
        _ids(path)
    path.write_text(yaml.safe_dump({**spec, "gird": {}}))
    with pytest.raises(ParamsError, match="gird"):
        load_sweep(path)


def test_two_point_sweep_end_to_end_then_skip(tmp_path, sweep):
    path, _ = sweep
    out = tmp_path / "out"
    result = run_sweep(path, out_root=out)
    assert result.ok and [o.status for o in result.outcomes] == ["done", "done"]
    root = out / "tiny"
    table = pd.read_parquet(root / "metrics.parquet")
    assert table["alpha"].tolist() == [50.0, 100.0]
    assert table["score"].tolist() == [0.5, 1.0]
    assert table["nested.t0"].tolist() == [0.3, 0.3] and "curve" not in table.columns
    # each run's params point the notebooks (and a training run) at the run folder
    assert table["run_name"].tolist() == [r.run_id for r in result.runs]
    csv = pd.read_csv(root / "metrics.csv")
    assert csv["run_id"].tolist() == table["run_id"].tolist()
    for run in result.runs:
        run_dir = root / run.run_id
        params = yaml.safe_load((run_dir / "params.yaml").read_text())
        assert params["output"]["dir"] == str(root) and params["scaffold"]["alpha"] == run.varied["scaffold.alpha"]
        assert (run_dir / DONE_MARKER).exists() and (run_dir / "tiny.ipynb").exists()
        assert json.loads((run_dir / "metrics.json").read_text())["metrics"]["score"] in (0.5, 1.0)
    html = (root / "report.html").read_text()
    assert "Sweep tiny" in html and "data:image/png;base64" in html and "alpha=100-" in html
    assert not list(root.rglob("*.tmp"))

    done_times = [(root / r.run_id / DONE_MARKER).stat().st_mtime_ns for r in result.runs]
    again = run_sweep(path, out_root=out, report=False)
    assert [o.status for o in again.outcomes] == ["skipped", "skipped"]
    assert [(root / r.run_id / DONE_MARKER).stat().st_mtime_ns for r in result.runs] == done_times
    pd.testing.assert_frame_equal(again.metrics, result.metrics)


def test_failed_and_half_written_runs_are_redone_cleanly(tmp_path, sweep):
    path, flags = sweep
    out = tmp_path / "out"
    (flags / "fail_50").write_text("")
    result = run_sweep(path, out_root=out, report=False)
    failed_id, ok_id = result.runs[0].run_id, result.runs[1].run_id
    assert result.failed == [failed_id] and not result.ok
    root = out / "tiny"
    failed_dir = root / failed_id
    assert not (failed_dir / DONE_MARKER).exists()
    assert "planned failure" in (failed_dir / "ERROR.txt").read_text()
    assert (failed_dir / "tiny.failed.ipynb").exists()
    status = pd.read_csv(root / "runs.csv").set_index("run_id")["status"]
    assert status[failed_id] == "failed" and status[ok_id] == "done"
    assert pd.read_parquet(root / "metrics.parquet")["run_id"].tolist() == [ok_id]
    # a half-written run: a metrics file that looks complete but no marker
    (failed_dir / "metrics.json").write_text(json.dumps({"seconds": 1, "metrics": {"score": 99}}))
    (failed_dir / "stale.txt").write_text("from the interrupted attempt")
    ok_done = (root / ok_id / DONE_MARKER).stat().st_mtime_ns
    assert collect_metrics(root, result.runs)["run_id"].tolist() == [ok_id]

    (flags / "fail_50").unlink()
    again = run_sweep(path, out_root=out, report=False)
    assert {o.run_id: o.status for o in again.outcomes} == {failed_id: "done", ok_id: "skipped"}
    assert not (failed_dir / "stale.txt").exists() and not (failed_dir / "ERROR.txt").exists()
    assert (root / ok_id / DONE_MARKER).stat().st_mtime_ns == ok_done
    assert again.metrics.set_index("run_id")["score"].to_dict() == {failed_id: 0.5, ok_id: 1.0}


def test_killed_sweep_resumes_and_cli(tmp_path, sweep, capsys):
    path, flags = sweep
    out = tmp_path / "out"
    (flags / "hang_100").write_text("")
    ids = _ids(path)
    started = out / "tiny" / ids[1] / "tiny" / "started"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ruscarl_lib.sweeps.run", str(path), "--out", str(out), "--no-report", "--only", ids[1]],
        cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    kernel_pid = None
    try:
        deadline = time.monotonic() + 120
        while not started.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert started.exists(), "second run never started"
        kernel_pid = int(started.read_text())
    finally:
        kill_sweep(proc, kernel_pid)
        (flags / "hang_100").unlink()
    root = out / "tiny"
    assert not (root / ids[1] / DONE_MARKER).exists()
    assert (root / ids[1] / "tiny.running.ipynb").exists()  # killed mid-notebook
    assert not (root / ids[1] / "metrics.json").exists()

    assert main([str(path), "--out", str(out), "--dry-run"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listing] == ["todo", "todo"]
    assert main([str(path), "--out", str(out), "--no-report", "--only", ids[1]]) == 0
    assert (root / ids[1] / DONE_MARKER).exists() and not (root / ids[1] / "tiny.running.ipynb").exists()
    assert not (root / ids[1] / "tiny" / "started").exists()  # the killed attempt's files are gone
    assert pd.read_parquet(root / "metrics.parquet")["score"].tolist() == [1.0]
    assert capsys.readouterr().out.startswith("metrics: ")
    assert main([str(path), "--out", str(out), "--dry-run"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == ["todo", "done"]


def test_shipped_ablation_sweep_expands_and_validates():
    spec, folder = load_sweep(ROOT / "params" / "sweep_paper_ablations.yaml")
    runs = expand_runs(spec, folder)
    # 9 grid cells + 10 points, one of which ({}) is the grid's default cell; 3 seeds each
    assert len(runs) == 54 and spec.seeds == [0, 1, 2]
    points = {r.point_id for r in runs}
    assert len(points) == 18 and all(sum(r.point_id == p for r in runs) == 3 for p in points)
    merf = [r for r in runs if r.varied.get("scaffold.binary_k") == 8 and "scaffold.step_decay" in r.varied]
    assert len(merf) == 3 and merf[0].settings["scaffold.alpha"] == 125.0
    assert sorted(r.settings["seed"] for r in merf) == [0, 1, 2]
    assert spec.process.threads == 1 and spec.resources.gpus == 0
    # MeRF keeps the rubric in the prompt for generation and for the loss (METHOD.md section 7)
    assert all(r.settings["scaffold.in_loss"] is True and r.settings["scaffold.step_decay"] == "constant" for r in merf)
    # it chooses t0 and alpha, so it scores validation, and its run ids are not a held-out sweep's
    assert spec.sandbox_split == "validation"
    heldout = expand_runs(spec.model_copy(update={"sandbox_split": "heldout"}), folder)
    assert not {r.run_id for r in runs} & {r.run_id for r in heldout}
    assert not {r.point_id for r in runs} & {r.point_id for r in heldout}


def test_sandbox_split_only_renames_runs_that_score_validation(tmp_path, sweep):
    """Held-out (the default) keeps the ids sweeps had before the field existed; validation is
    hashed in, so a validation sweep never reuses a held-out run's folder."""
    spec, folder = load_sweep(sweep[0])
    before = [r.run_id for r in expand_runs(spec, folder)]
    as_heldout = spec.model_copy(update={"prepare_sandbox": True, "sandbox_split": "heldout"})
    assert [r.run_id for r in expand_runs(as_heldout, folder)] == before
    not_prepared = spec.model_copy(update={"sandbox_split": "validation"})  # no sandbox: nothing to score
    assert [r.run_id for r in expand_runs(not_prepared, folder)] == before
    as_validation = spec.model_copy(update={"prepare_sandbox": True, "sandbox_split": "validation"})
    renamed = [r.run_id for r in expand_runs(as_validation, folder)]
    assert len(renamed) == len(before) and not set(renamed) & set(before)


def test_templated_parameters_are_filled_per_run(tmp_path):
    from ruscarl_lib.sweeps.worker import _filled

    got = _filled({"adapter": "{run_dir}/03/{run_id}/adapter", "n": 3, "plain": "{other}"}, "r1", tmp_path / "r1", tmp_path)
    assert got == {"adapter": f"{tmp_path}/r1/03/r1/adapter", "n": 3, "plain": "{other}"}


@pytest.mark.slow
def test_sandbox_sweep_trains_then_evaluates_what_it_trained(tmp_path):
    """prepare_sandbox + the real 03 and 04 notebooks: 04 must evaluate the weights 03 wrote."""
    raw = yaml.safe_load((ROOT / "params" / "sandbox.yaml").read_text())
    raw["sandbox"]["world"].update(n_train=16, n_heldout=4, n_conditions=6)
    raw["sandbox"]["policy"] = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 2,
                                "epochs": 0.2, "sft": {"n_examples": 100}}
    raw["sandbox"]["cache_dir"] = str(tmp_path / "policies")
    raw["train"].update(max_steps=2, prompts_per_step=2, per_device_batch_size=16, save_steps=2)
    raw["eval"].update(n_samples=1, batch_size=8)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(raw))
    spec = yaml.safe_load((ROOT / "params" / "sweep_paper_ablations.yaml").read_text())
    spec.update(name="mini", base="base.yaml", grid={}, points=[{"scaffold.enabled": False}],
                notebooks=[str(ROOT / "notebooks" / f"{n}.ipynb") for n in spec["notebooks"]])
    path = tmp_path / "sweep_mini.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = run_sweep(path, out_root=tmp_path / "sweeps", report=False)
    assert not result.failed, result.outcomes
    row = result.metrics.iloc[0]
    run_dir = result.root / row["run_id"]
    trained = run_dir / "03_train_grpo" / row["run_id"]
    assert (trained / "model").is_dir()  # the sandbox trains every weight: model/, not adapter/
    assert Path(yaml.safe_load((run_dir / "04_evaluate" / "params.yaml").read_text())["eval"]["adapter"]) == trained
    evaluated = json.loads((run_dir / "04_evaluate" / "report.json").read_text())["extra"]["adapter"]
    assert Path(evaluated) == trained / "model"
    assert 0.0 <= row["04_evaluate.score"] <= 1.0 and row["03_train_grpo.rl_steps"] == 2
    assert (result.root / "sandbox" / "sandbox_params.yaml").exists()
    scored = yaml.safe_load((run_dir / "04_evaluate" / "params.yaml").read_text())["eval"]["data_path"]
    assert Path(scored) == result.root / "sandbox" / "validation.jsonl"  # the shipped sweep's sandbox_split
