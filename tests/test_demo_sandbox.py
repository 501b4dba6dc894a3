"""A short version of the main job: the sandbox suite (notebooks 00-05) on a smaller world.

Checks the files every stage wrote, and that RuscaRL beat the plain rubric-GRPO baseline on
the held-out split in this run (measured on this machine: 0.43 against 0.00 after 150 steps).
The world and warm start are smaller than the demo's (8 conditions, 3,000 SFT conversations)
and training is 150 steps instead of 400; everything else is `params/sandbox.yaml`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ruscarl_lib.demo import run_demo

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.mark.timeout(2400)  # about 5 minutes alone on 2 cores; generous for a loaded CI machine
def test_sandbox_suite_end_to_end(tmp_path):
    raw = yaml.safe_load((ROOT / "params" / "sandbox.yaml").read_text())
    raw["sandbox"]["world"].update(n_conditions=8, n_train=64, n_heldout=16)
    raw["sandbox"]["policy"] = {"epochs": 4, "sft": {"n_examples": 3000}}
    raw["train"].update(max_steps=150, save_steps=75)
    raw["schedule_view"]["total_steps"] = 150
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
        assert summary["rl_steps"] == 150 and summary["scaffold_enabled"] is enabled
    world = json.loads((out / "00_sandbox_world" / "summary.json").read_text())
    assert world["n_train"] == 64 and Path(world["policy"]).exists()
    # the bottleneck: the start only scores when hinted; then RuscaRL learns, plain GRPO does not
    assert world["unhinted_score"] < 0.05 and world["hinted_score"] > 0.3
    scores = headline["heldout_score"]
    assert scores["start"] < 0.05 and scores["baseline"] < 0.05
    assert headline["ruscarl_minus_baseline"] >= 0.2, headline
    assert json.loads((out / "headline.json").read_text())["heldout_score"] == scores
    html = Path(headline["report"]).read_text()
    assert all(n in html for n in ("00_sandbox_world", "03_train_ruscarl", "05_analysis"))
