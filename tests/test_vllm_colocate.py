"""`train.use_vllm: true` (colocate) on vLLM's CPU build: scaffolded rollouts through the engine
GPU runs use, the clean prompt in the loss.

The scaffolded trainer runs one GRPO step in .venv-vllm (scripts/setup_vllm_lane.sh) with TRL's
in-process vLLM engine; the contract probe checks every rollout (generation on the scaffolded
ids, log-probs on the clean ids) and the decoded engine prompts show SmolLM2's chat template
with the scaffold inside its one system message. Without `trl_compat.
keep_vllm_cpu_weights_reloadable` the first weight sync fails on CPU (vLLM prepacks linear
weights), which is what the step exercises.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import vllm_lane_python
from ruscarl_lib.common.loopback import free_loopback_port

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.real_judge, pytest.mark.timeout(900)]


def test_colocated_vllm_rollouts_on_cpu_keep_the_clean_prompt_contract(tmp_path):
    lane = vllm_lane_python()
    out = tmp_path / "colocate.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1",
           "MASTER_PORT": str(free_loopback_port())}
    proc = subprocess.run([str(lane), str(ROOT / "tests" / "vllm_colocate_script.py"), str(tmp_path / "runs"), str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=800)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    got = json.loads(out.read_text())

    report = got["report"]
    assert got["engine"].startswith("vllm"), got["engine"]
    assert report["rollouts"] == 4 and report["loss_rows"] >= 4 and not report["in_loss"], report
    assert 1 <= report["scaffolded"] < 4, report  # linear intra-group ratios: the last sample sees none
    shown = 0
    for r in got["rollouts"]:
        text = r["text"]
        assert text.count("<|im_start|>system") == 1, text[:400]
        system = text.split("<|im_start|>system", 1)[1].split("<|im_end|>", 1)[0]
        assert all(c in system for c in r["shown"]), (r["shown"], system)
        shown += bool(r["shown"])
    assert shown == report["scaffolded"]
    rollouts = Path(got["run_dir"]) / "rollouts"
    assert rollouts.is_dir() and any(rollouts.iterdir())

