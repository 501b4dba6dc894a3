"""The GPU smoke script, checked on CPU (`--device cpu`): it must not rot between GPU runs.

This does not claim anything about a GPU: the real check is scripts/gpu_smoke.sh on the GPU
machine. Here the per-backend script runs the transformers backend end to end on CPU (both
arms, contract checks, the JSON it writes), and the shell script must at least parse.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_smoke_script_runs_on_cpu(tmp_path):
    out = tmp_path / "smoke.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRL_EXPERIMENTAL_SILENCE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_smoke.py"), "--backend", "transformers",
                           "--device", "cpu", "--steps", "2", "--out", str(tmp_path / "runs"), "--json", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["ok"] and res["device"] == "cpu"
    on, off = res["arms"]["scaffold_on"], res["arms"]["scaffold_off"]
    for arm in (on, off):
        assert arm["base_class"] == "trl.trainer.grpo_trainer.GRPOTrainer"
        assert arm["optimizer_steps"] == 4 and len(arm["step_times_s"]) == 4
        assert arm["live_contract"]["prompt"] == "clean" and arm["eval_prompts_checked"] > 0
        assert arm["effective_args"]["epsilon_high"] == 0.2
    assert on["live_contract"]["scaffolded"] > 0 and off["live_contract"]["scaffolded"] == 0


def test_smoke_shell_script_parses():
    subprocess.run(["bash", "-n", str(ROOT / "scripts" / "gpu_smoke.sh")], check=True)
