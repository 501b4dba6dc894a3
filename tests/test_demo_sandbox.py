"""The sandbox suite of the demo runs notebooks 00-05 end to end on a very small world.

This checks the pipeline (files, parameters passed between notebooks, report), not learning:
the world and policy here are far too small for RuscaRL to beat the baseline.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ruscarl_lib.demo import run_demo

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_sandbox_suite_end_to_end(tmp_path):
    raw = yaml.safe_load((ROOT / "params" / "sandbox.yaml").read_text())
    raw["sandbox"]["world"].update(n_train=24, n_heldout=6, n_conditions=6)
    raw["sandbox"]["policy"] = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 2,
                                "epochs": 0.2, "sft": {"n_examples": 200}}
    raw["train"].update(max_steps=3, prompts_per_step=2, per_device_batch_size=16, save_steps=2)
    raw["schedule_view"]["total_steps"] = 3
    raw["eval"].update(n_samples=2, batch_size=16)
    raw["output"]["dir"] = str(tmp_path / "runs")
    raw["sandbox"]["cache_dir"] = str(tmp_path / "policies")
    params = tmp_path / "small.yaml"
    params.write_text(yaml.safe_dump(raw))
    headline = run_demo(tmp_path / "out", str(params), suite="sandbox", progress=False,
                        overrides={"00_sandbox_world": {"report_tasks": 4}})
    out = tmp_path / "out"
    assert len(headline["notebooks"]) == 9 and all(Path(p).exists() for p in headline["notebooks"])
    for name in ("start", "ruscarl", "baseline"):
        score = headline["heldout_score"][name]
        assert 0.0 <= score <= 1.0
        assert (out / "evals" / name / "report.json").exists()
    # both arms trained from the same warm start for the same number of steps
    for arm, enabled in (("ruscarl", True), ("baseline", False)):
        summary = json.loads((out / "runs" / arm / "summary.json").read_text())
        assert summary["rl_steps"] == 3 and summary["scaffold_enabled"] is enabled
    world = json.loads((out / "00_sandbox_world" / "summary.json").read_text())
    assert world["n_train"] == 24 and Path(world["policy"]).exists()
    html = Path(headline["report"]).read_text()
    assert all(n in html for n in ("00_sandbox_world", "03_train_ruscarl", "05_analysis"))
