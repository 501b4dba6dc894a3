"""Sweep executors: GPU slices and accelerate launch on one machine (checked through the env and
command each run got, no GPUs needed), the seed axis and its statistics, and a sweep killed
mid-run and resumed under Ray and locally giving the same table and the same report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import yaml

from conftest import kill_sweep, write_tiny_notebook
from ruscarl_lib.params import ParamsError
from ruscarl_lib.sweeps.executors import ExecutorError, LocalExecutor, ProcessSpec, make_executor
from ruscarl_lib.sweeps.stats import mean_interval, orderings_beyond_noise, seed_summary, t_cdf, t_quantile
from ruscarl_lib.sweeps.worker import DONE_MARKER
from ruscarl_lib.sweeps.spec import expand_runs, load_sweep
from ruscarl_lib.sweeps.run import main, run_sweep

ROOT = Path(__file__).resolve().parents[1]
FAKE_LAUNCHER = Path(__file__).resolve().parent / "fake_accelerate.py"

PARAMETERS = "params_file = ''\noutput_dir = ''\nhang_flag = ''\nhold_s = 0.0"
BODY = """\
import json, os, time
from pathlib import Path
import yaml
from ruscarl_lib.notebook.reports import write_json

t_start = time.time()
p = yaml.safe_load(open(params_file))
alpha, seed = p['scaffold']['alpha'], p['seed']
out = Path(output_dir)
out.mkdir(parents=True, exist_ok=True)
flag = f"{hang_flag}_{alpha:g}_{seed}"
if hang_flag and os.path.exists(flag):
    (out / 'started').write_text(str(os.getpid()))
    while os.path.exists(flag):
        time.sleep(0.1)
    raise SystemExit('released')
time.sleep(hold_s)
rank = os.environ.get('RANK', '0')
write_json(out / ('summary.json' if rank == '0' else f'rank{rank}.json'), {
    'alpha': alpha, 'seed': seed, 'score': alpha / 100 + seed / 100,
    'env': {k: os.environ.get(k, '') for k in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'ATEN_CPU_CAPABILITY')},
    'devices': os.environ.get('CUDA_VISIBLE_DEVICES', ''), 't_start': t_start, 't_end': time.time()})
"""


def _notebook(path: Path) -> Path:
    return write_tiny_notebook(path, PARAMETERS, BODY)


def _sweep(tmp_path: Path, **extra) -> Path:
    (tmp_path / "base.yaml").write_text("scaffold:\n  t0: 0.3\nseed: 0\n")
    nb = _notebook(tmp_path / "tiny.ipynb")
    (tmp_path / "flags").mkdir(exist_ok=True)
    spec = {"name": "tiny", "base": "base.yaml", "notebooks": [str(nb)],
            "parameters": {"hang_flag": str(tmp_path / "flags" / "hang")},
            "process": {"threads": 3, "env": {"ATEN_CPU_CAPABILITY": "default",
                                              "FAKE_LAUNCH_RECORD": str(tmp_path / "launches.jsonl")}},
            "max_parallel": 2, **extra}
    path = tmp_path / "sweep_tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _runs(path):
    spec, folder = load_sweep(path)
    return expand_runs(spec, folder)


# --------------------------------------------------------------------------------------------
# One machine: process settings, GPU slices, accelerate launch
# --------------------------------------------------------------------------------------------


def test_gpu_slices_never_shared_and_process_settings_reach_the_run(tmp_path, monkeypatch):
    path = _sweep(tmp_path, grid={"scaffold.alpha": [10.0, 20.0, 30.0, 40.0]},
                  parameters={"hang_flag": "", "hold_s": 1.5})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,6,7")  # an already-set mask is respected
    with pytest.raises(ExecutorError, match="only 4 GPU"):
        run_sweep(path, out_root=tmp_path / "out", gpus_per_run=5, report=False)
    result = run_sweep(path, out_root=tmp_path / "out", gpus_per_run=2, report=False)
    assert result.ok, result.outcomes
    table = result.metrics
    assert set(table["devices"]) == {"3,5", "6,7"}  # both slices used, nothing else handed out
    rows = table.to_dict("records")
    overlapping = 0
    for i, a in enumerate(rows):
        for b in rows[i + 1:]:
            if a["t_start"] < b["t_end"] and b["t_start"] < a["t_end"]:  # ran at the same time
                overlapping += 1
                assert a["devices"] != b["devices"], (a, b)
    assert overlapping >= 1  # two slices: runs did share the machine
    assert (table["env.OMP_NUM_THREADS"] == "3").all() and (table["env.MKL_NUM_THREADS"] == "3").all()
    assert (table["env.ATEN_CPU_CAPABILITY"] == "default").all()
    info = json.loads((result.root / result.runs[0].run_id / "run.json").read_text())
    assert info["process_env"]["OMP_NUM_THREADS"] == "3" and info["devices"]["CUDA_VISIBLE_DEVICES"] in ("3,5", "6,7")
    assert not (tmp_path / "launches.jsonl").exists()  # no accelerate config: plain worker processes


def test_multi_gpu_run_is_started_through_accelerate_launch(tmp_path):
    path = _sweep(tmp_path, grid={"scaffold.alpha": [10.0, 20.0]}, parameters={"hang_flag": ""},
                  resources={"gpus": 2, "accelerate_config": "configs/accelerate_ddp.yaml"})
    executor = LocalExecutor(max_parallel=None, gpus_per_run=2, gpu_ids=["0", "1", "2", "3"],
                             launcher=[sys.executable, str(FAKE_LAUNCHER)])
    result = run_sweep(path, out_root=tmp_path / "out", executor=executor, report=False)
    assert result.ok, result.outcomes
    launches = [json.loads(line) for line in (tmp_path / "launches.jsonl").read_text().splitlines()]
    assert len(launches) == 2 and sorted(x["cuda"] for x in launches) == ["0,1", "2,3"]
    for got in launches:
        argv = got["argv"]
        assert argv[:4] == ["--config_file", str(ROOT / "configs" / "accelerate_ddp.yaml"), "--num_processes", "2"]
        assert argv[4] == "--main_process_port" and argv[5].isdigit()
        assert argv[6:9] == ["-m", "ruscarl_lib.sweeps.run", str(path)] and "--worker" in argv and got["omp"] == "3"
    for run in result.runs:
        run_dir = result.root / run.run_id
        # every rank executed the notebook; rank 0 alone wrote the run's metrics and DONE
        assert (run_dir / "tiny.ipynb").exists() and (run_dir / "tiny.rank1.ipynb").exists()
        assert json.loads((run_dir / "tiny" / "rank1.json").read_text())["alpha"] == run.varied["scaffold.alpha"]
        assert (run_dir / DONE_MARKER).exists()
        assert json.loads((run_dir / "run.json").read_text())["devices"]["WORLD_SIZE"] == "2"
    assert result.metrics["score"].tolist() == [0.1, 0.2]


def test_ray_missing_fails_with_a_clear_message(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(ExecutorError, match=r"needs Ray.*ruscarl-lib\[ray\]"):
        make_executor("ray")
    path = _sweep(tmp_path, grid={"scaffold.alpha": [10.0]})
    assert main([str(path), "--out", str(tmp_path / "out"), "--executor", "ray"]) == 2
    assert "needs Ray" in capsys.readouterr().err
    assert not (tmp_path / "out" / "tiny").exists()  # failed before anything ran


def test_process_spec_environment():
    env = ProcessSpec(threads=2, env={"ATEN_CPU_CAPABILITY": "avx2", "OMP_NUM_THREADS": "4", "FLAG": True}).environment()
    assert env["MKL_NUM_THREADS"] == "2" and env["OMP_NUM_THREADS"] == "4" and env["FLAG"] == "true"
    with pytest.raises(ValueError, match="environment variable names"):
        ProcessSpec(env={"A=B": "1"})


# --------------------------------------------------------------------------------------------
# Seeds
# --------------------------------------------------------------------------------------------


def test_t_quantiles_match_the_textbook_table():
    for df, t in [(1, 12.706), (2, 4.303), (3, 3.182), (9, 2.262), (30, 2.042)]:
        assert t_quantile(0.975, df) == pytest.approx(t, abs=1e-3)
    assert t_cdf(0.0, 5) == pytest.approx(0.5) and t_cdf(1.0, 1) == pytest.approx(0.75)
    mean, sd, low, high = mean_interval([1.0, 2.0, 3.0])
    assert (mean, sd) == (2.0, 1.0) and high - mean == pytest.approx(4.303 / 3 ** 0.5, abs=1e-3)
    assert all(x != x for x in mean_interval([1.0])[1:])  # one seed: no interval


def test_seed_axis_expansion_and_summary(tmp_path):
    path = _sweep(tmp_path, grid={"scaffold.alpha": [10.0, 20.0]}, seeds=[0, 1, 2])
    runs = _runs(path)
    assert len(runs) == 6 and [r.settings["seed"] for r in runs] == [0, 1, 2, 0, 1, 2]
    assert runs[0].run_id.startswith("alpha=10_seed=0-") and len({r.run_id for r in runs}) == 6
    assert len({r.point_id for r in runs}) == 2 and runs[0].point_id == runs[2].point_id
    # the process settings are part of what a run is: other threads, other run ids
    other = yaml.safe_load(path.read_text())
    other["process"]["threads"] = 1
    path.write_text(yaml.safe_dump(other))
    assert {r.run_id for r in _runs(path)}.isdisjoint({r.run_id for r in runs})
    other["points"] = [{"seed": 4}]
    path.write_text(yaml.safe_dump(other))
    with pytest.raises(ParamsError, match="seed axis"):
        _runs(path)

    table = pd.DataFrame({"point": ["a"] * 3 + ["b"] * 3 + ["c"] * 3, "alpha": [1] * 3 + [2] * 3 + [3] * 3,
                          "seed": [0, 1, 2] * 3,
                          "score": [0.50, 0.52, 0.54, 0.10, 0.12, 0.14, 0.45, 0.60, 0.30]})
    summary = seed_summary(table, "score", ["alpha"])
    assert summary["point"].tolist() == ["a", "c", "b"] and summary["n"].tolist() == [3, 3, 3]
    assert summary.loc[0, "seeds"] == "0,1,2" and summary.loc[0, "mean"] == pytest.approx(0.52)
    beyond = orderings_beyond_noise(summary)
    # a > b clearly; c is too noisy to order against either
    assert list(zip(beyond["better"], beyond["worse"])) == [("a", "b")]
    # a baseline as good as the method is not "beyond noise"
    same = table.assign(score=[0.5, 0.52, 0.54] * 3)
    assert orderings_beyond_noise(seed_summary(same, "score", ["alpha"])).empty


# --------------------------------------------------------------------------------------------
# Ray: killed mid-run, resumed; the same table and report as locally
# --------------------------------------------------------------------------------------------


def _require_ray(monkeypatch):
    """Ray, bound to loopback: Ray turns 127.0.0.1 into the machine's routable address unless its
    cluster mode is off, which this (private) switch does; the driver subprocess inherits it."""
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("Ray is not installed; CI installs the `ray` extra (scripts/setup.sh)")
        pytest.skip("Ray is not installed (pip install 'ruscarl-lib[ray]')")
    from ray._private import ray_constants

    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)  # in case ray was imported earlier
    return ray


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead too
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


def _kill_mid_run(path: Path, out: Path, extra_args: list[str], hang_run, others) -> None:
    """Start the sweep as a driver process, wait until every run but `hang_run` is done and that
    one is inside its notebook, then kill the driver (SIGKILL) and the run's kernel."""
    tmp = path.parent
    flag = tmp / "flags" / f"hang_{hang_run.settings['scaffold.alpha']:g}_{hang_run.settings['seed']}"
    flag.write_text("")
    root = out / "tiny"
    started = root / hang_run.run_id / "tiny" / "started"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "ruscarl_lib.sweeps.run", str(path), "--out", str(out), "--no-report",
                             *extra_args], cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kernel_pid = worker_pid = None
    try:
        deadline = time.monotonic() + 400  # generous: a loaded 2-core machine
        while time.monotonic() < deadline and proc.poll() is None and not (
                started.exists() and all((root / r.run_id / DONE_MARKER).exists() for r in others)):
            time.sleep(0.2)
        assert started.exists(), f"the run to kill never started (driver exit code {proc.poll()})"
        kernel_pid = int(started.read_text())
        worker_pid = json.loads((root / hang_run.run_id / "run.json").read_text())["pid"]
    finally:
        kill_sweep(proc, kernel_pid)
    # the run's worker dies with whoever started it (the driver, or Ray's worker)
    deadline = time.monotonic() + 60
    while worker_pid is not None and _alive(worker_pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert worker_pid is None or not _alive(worker_pid), "the killed run's worker survived its driver"
    flag.unlink()
    assert not (root / hang_run.run_id / DONE_MARKER).exists()
    assert (root / hang_run.run_id / "tiny.running.ipynb").exists()  # killed mid-notebook


def _report_form(root: Path) -> list[tuple[str, str, list[str]]]:
    nb = nbformat.read(str(root / "summary.ipynb"), as_version=4)
    return [(c.cell_type, c.source, [o.get("output_type") for o in c.get("outputs", [])]) for c in nb.cells
            if "injected-parameters" not in c.metadata.get("tags", [])]  # that one names the sweep's folder


def test_ray_and_local_sweeps_killed_and_resumed_agree(tmp_path, monkeypatch):
    ray = _require_ray(monkeypatch)
    path = _sweep(tmp_path, grid={"scaffold.alpha": [50.0, 100.0]}, seeds=[0, 1],
                  resources={"cpus": 1, "memory_gb": 0.2}, report_metrics=["score"])
    runs = _runs(path)
    hang, others = runs[-1], runs[:-1]
    volatile = ["seconds", "t_start", "t_end"]

    # locally
    _kill_mid_run(path, tmp_path / "local", [], hang, others)
    local = run_sweep(path, out_root=tmp_path / "local")
    assert {o.run_id: o.status for o in local.outcomes} == {**{r.run_id: "skipped" for r in others}, hang.run_id: "done"}

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=200 * 2**20)
    try:
        address = ray.get_runtime_context().gcs_address
        assert address.startswith("127.0.0.1:")
        _kill_mid_run(path, tmp_path / "ray", ["--executor", "ray", "--address", address], hang, others)
        resumed = run_sweep(path, out_root=tmp_path / "ray", executor="ray")  # a restarted driver
    finally:
        ray.shutdown()
    assert {o.run_id: o.status for o in resumed.outcomes} == {o.run_id: o.status for o in local.outcomes}

    pd.testing.assert_frame_equal(resumed.metrics.drop(columns=volatile), local.metrics.drop(columns=volatile))
    assert resumed.metrics["score"].tolist() == [0.5, 0.51, 1.0, 1.01]
    assert (resumed.metrics["env.OMP_NUM_THREADS"] == "3").all()  # Ray's own OMP_NUM_THREADS=1 did not leak
    for run in runs:
        got = [json.loads((t.root / run.run_id / "run.json").read_text())["process_env"] for t in (local, resumed)]
        assert got[0] == got[1]
    assert _report_form(resumed.root) == _report_form(local.root)
    html = (resumed.root / "report.html").read_text()
    assert "95% t-interval over seeds [0, 1]" in html and "1 of 1 orderings beyond noise" in html
    seeds_table = pd.read_csv(resumed.root / "seeds_score.csv")
    assert seeds_table["mean"].round(3).tolist() == [1.005, 0.505]
