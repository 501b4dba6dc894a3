"""The forced-Unsloth CPU lane: our scaffolded trainer on Unsloth's real rewritten GRPOTrainer.

It exercises Unsloth's *trainer rewrite* (generated `UnslothGRPOTrainer`: config, __init__,
`_generate_and_score_completions`, log-prob and loss code), NOT its GPU kernels (no Triton
kernels, fused loss, vLLM or 4-bit run on CPU). It needs the lane's own environment,
`.venv-unsloth` (scripts/setup_unsloth_lane.sh; UNSLOTH_LANE_PYTHON names another
interpreter), and runs tests/unsloth_lane_script.py there in a process of its own, because
Unsloth's patch rebinds `trl.GRPOTrainer` for the whole process. Without the environment the
test skips; under CI=true it fails instead.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.unsloth_lane]
ROOT = Path(__file__).resolve().parents[1]


def _lane_python() -> Path | None:
    path = Path(os.environ.get("UNSLOTH_LANE_PYTHON", ROOT / ".venv-unsloth" / "bin" / "python"))
    return path if path.exists() else None


@pytest.fixture(scope="module")
def lane(tmp_path_factory) -> dict:
    py = _lane_python()
    if py is None:
        msg = "the Unsloth lane environment is missing: run scripts/setup_unsloth_lane.sh"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    out = tmp_path_factory.mktemp("lane")
    # TORCHDYNAMO_DISABLE: on a fresh clone, torch 2.13's inductor rejected Unsloth's compiled
    # CPU modules ("_alloc_from_pool ... may not alias any inputs"); the lane checks Unsloth's
    # trainer rewrite, not its compiled kernels, so it runs them eagerly.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TORCHDYNAMO_DISABLE": "1",
           "UNSLOTH_COMPILE_LOCATION": str(out / "unsloth_compiled_cache")}
    proc = subprocess.run([str(py), str(ROOT / "tests" / "unsloth_lane_script.py"), str(out)],
                          cwd=out, env=env, capture_output=True, text=True, timeout=900)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("LANE_RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-4000:]
    return json.loads(lines[-1].split(" ", 1)[1])


def test_scaffolded_trainer_builds_on_unsloths_rewritten_trainer(lane):
    assert lane["base"] == "UnslothGRPOTrainer.UnslothGRPOTrainer" and lane["base_is_unsloth"]
    on = lane["on"]
    assert on["trainer_base"] == lane["base"] and on["trainer_base_is_unsloth"]
    assert on["global_step"] == 6 and len(on["losses"]) == 6  # 3 RL steps x 2 updates


def test_contract_holds_on_unsloths_trainer(lane):
    live, offline = lane["on"]["live_contract"], lane["on"]["contract"]
    assert live["prompt"] == "clean" and live["rollouts"] == 8 and live["scaffolded"] > 0
    assert live["loss_rows"] >= 8 and live["handed_over"] == 8
    # 3 RL steps x 8 rollouts; each in the loss once and in old + ref log-probs once
    assert offline == {"rollouts": 24, "scaffolded": offline["scaffolded"], "loss_rows": 24,
                       "old_ref_rows": 48}
    assert offline["scaffolded"] > 0


def test_scaffolds_off_matches_unsloths_stock_trainer(lane):
    off = lane["off"]
    assert off["stock_class"] == lane["base"]
    assert off["same_rollouts"]
    assert len(off["losses_ours"]) == len(off["losses_stock"]) == 2
    assert off["max_loss_diff"] <= off["loss_tol"]
    assert off["lora_keys_match"] and off["max_weight_diff"] <= off["weight_tol"]
