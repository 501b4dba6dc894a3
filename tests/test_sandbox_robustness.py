"""Robustness bookkeeping: the collapse rule, and comparisons keyed by what produced them."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from ruscarl_lib.params import load_params
from ruscarl_lib.sandbox import compare
from ruscarl_lib.sandbox.robustness import Cell, cell_digest, cell_params, detect_collapse


def _steps(length, reward):
    return pd.DataFrame({"rl_step": range(1, len(length) + 1), "completion_tokens_mean": length, "reward_mean": reward})


def test_collapse_rule_fires_on_a_lasting_fall_only():
    n = 200
    steady = _steps([20.0] * n, [0.3] * n)
    assert detect_collapse(steady)["collapsed"] is False
    # length falls from 20 to 6 within a few steps around step 100 and stays there
    fall = _steps([20.0] * 100 + [6.0] * 100, [0.3] * n)
    verdict = detect_collapse(fall)
    assert verdict["collapsed"] and verdict["collapse_signal"] == "length" and 95 <= verdict["collapse_step"] <= 115
    # the same fall that recovers within 50 steps is not a collapse
    dip = _steps([20.0] * 100 + [6.0] * 20 + [20.0] * 80, [0.3] * n)
    assert detect_collapse(dip)["collapsed"] is False
    # reward falling from 0.3 to 0.02 for good is one
    assert detect_collapse(_steps([20.0] * n, [0.3] * 100 + [0.02] * 100))["collapse_signal"] == "reward"
    # a reward that never rose (the baseline at zero) cannot collapse by noise
    noise = [0.0, 0.05] * 100
    assert detect_collapse(_steps([20.0] * n, noise))["collapsed"] is False


def test_cell_digest_follows_the_params_and_the_kernel_setting():
    a = Cell("small", None, 0, 1, "default")
    pa = cell_params(a, "params/sandbox.yaml")
    assert pa.sandbox.world["n_conditions"] == 8 and pa.train.max_steps == 150
    assert cell_params(Cell("default", None, 0, 1, "default"), "params/sandbox.yaml").train.max_steps == 400
    assert cell_digest(a, pa, "heldout") == cell_digest(a, cell_params(a, "params/sandbox.yaml"), "heldout")
    other_world = Cell("small", 3, 0, 1, "default")
    assert cell_params(other_world, "params/sandbox.yaml").sandbox.world["seed"] == 3
    assert cell_digest(other_world, cell_params(other_world, "params/sandbox.yaml"), "heldout") != cell_digest(a, pa, "heldout")
    avx2 = Cell("small", None, 0, 1, "avx2")
    assert cell_digest(avx2, pa, "heldout") != cell_digest(a, pa, "heldout")
    assert cell_digest(a, pa, "validation") != cell_digest(a, pa, "heldout")
    lr = cell_params(a, "params/sandbox.yaml", {"train.learning_rate": 1e-4})
    assert cell_digest(a, lr, "heldout") != cell_digest(a, pa, "heldout")
    # a world knob at its default, written out or not, is the same world; another value is not
    same = cell_params(a, "params/sandbox.yaml", {"sandbox.world.repeat_points": 3})
    assert cell_digest(a, same, "heldout") == cell_digest(a, pa, "heldout")
    other = cell_params(a, "params/sandbox.yaml", {"sandbox.world.repeat_points": 0})
    assert cell_digest(a, other, "heldout") != cell_digest(a, pa, "heldout")
    with pytest.raises(ValueError, match="kernel"):
        cell_params(Cell("small", None, 0, 1, "sse"), "params/sandbox.yaml")


def test_comparison_reruns_when_the_world_changes(tmp_path, monkeypatch):
    """A finished comparison is reused for the same params and recomputed for another world."""
    calls = []

    class FakeFiles:
        def __init__(self, params, root):
            self.params = params
            self.heldout_path = root / "heldout.jsonl"
            self.validation_path = root / "validation.jsonl"

    def fake_prepare(params, root):
        return FakeFiles(params, root)

    def fake_evaluate(params, out, progress):
        world_seed = params.sandbox.world.get("seed", 0)
        calls.append(("eval", world_seed, params.eval.adapter, params.eval.data_path))
        return {"score": 0.1 * (world_seed + 1), "std": 0.0, "score_unclipped": 0.0, "n_responses": 4}

    class FakeResult:
        def __init__(self, folder):
            self.weights_dir = folder / "model"
            self.weights_dir.mkdir(parents=True)

    def fake_train(params):
        calls.append(("train", params.scaffold.enabled))
        return FakeResult(Path(params.output.dir) / params.output.run_name)

    import ruscarl_lib.train.run as training

    monkeypatch.setattr(compare, "prepare_sandbox", fake_prepare)
    monkeypatch.setattr(compare, "_evaluate", fake_evaluate)
    monkeypatch.setattr(training, "run_training", fake_train)
    params = load_params("params/sandbox.yaml")
    first = compare.compare_arms(params, [0], tmp_path / "cmp", progress=False)
    n = len(calls)
    assert n == 5  # start eval + two arms x (train + eval)
    again = compare.compare_arms(params, [0], tmp_path / "cmp", progress=False)
    assert len(calls) == n and again["score"].tolist() == first["score"].tolist()
    other = load_params("params/sandbox.yaml", {"sandbox.world.seed": 4})
    moved = compare.compare_arms(other, [0], tmp_path / "cmp", progress=False)
    assert len(calls) == 2 * n
    assert moved["score"].tolist() != first["score"].tolist()
    # the other split re-evaluates (start and both arms) on its own file, without retraining
    val = compare.compare_arms(other, [0], tmp_path / "cmp", split="validation", progress=False)
    assert len(calls) == 2 * n + 3
    assert all(c[0] == "eval" and c[3].endswith("validation.jsonl") for c in calls[-3:])
    summary = compare.comparison_summary(val)
    assert summary["split"] == "validation" and "baseline_unclipped_mean" in summary
    stored = json.loads((tmp_path / "cmp" / "seed0" / "ruscarl" / "validation_result.json").read_text())
    assert stored["split"] == "validation" and stored["digest"]
    # both splits' results stay; a changed recipe retrains
    assert (tmp_path / "cmp" / "seed0" / "ruscarl" / "heldout_result.json").is_file()
    lr = load_params("params/sandbox.yaml", {"sandbox.world.seed": 4, "train.learning_rate": 1e-3})
    compare.compare_arms(lr, [0], tmp_path / "cmp", split="validation", progress=False)
    assert [c for c in calls[2 * n + 3:] if c[0] == "train"] == [("train", True), ("train", False)]


def test_cell_folders_keep_variants_and_splits_apart(tmp_path):
    """A tuning variant (overrides) gets its own cell folder; both splits share one folder and
    are stored as separate result files, so neither replaces the other."""
    from ruscarl_lib.sandbox.robustness import cell_folder, load_cell

    cell = Cell("default", None, 0, 1, "default")
    plain = cell_folder(tmp_path, cell, {})
    masked = cell_folder(tmp_path, cell, {"train.mask_truncated_completions": True})
    assert plain != masked and plain.name == cell.name and masked.name.startswith(cell.name + "_set-")
    assert masked == cell_folder(tmp_path, cell, {"train.mask_truncated_completions": True})
    plain.mkdir(parents=True)
    (plain / "heldout_cell.json").write_text(json.dumps({"digest": "d1", "gap": 0.5}))
    assert load_cell(tmp_path, cell, "d1", "heldout", {})["gap"] == 0.5
    assert load_cell(tmp_path, cell, "d1", "validation", {}) is None
    assert load_cell(tmp_path, cell, "d1", "heldout", {"train.mask_truncated_completions": True}) is None
    assert load_cell(tmp_path, cell, "other", "heldout", {}) is None


def test_overrides_that_change_nothing_do_not_fork_the_cell_folder():
    from ruscarl_lib.sandbox.robustness import effective_overrides

    cells = [Cell("default", None, 0, 1, "default"), Cell("small", 3, 1, 2, "avx2")]
    current = load_params("params/sandbox.yaml").train.max_completion_length
    same = {"train.max_completion_length": current}
    assert effective_overrides(cells, "params/sandbox.yaml", same) == {}
    changed = {"train.max_completion_length": current + 1, "train.top_k": load_params("params/sandbox.yaml").train.top_k}
    assert effective_overrides(cells, "params/sandbox.yaml", changed) == {"train.max_completion_length": current + 1}
    # the small configuration sets max_steps 150 itself: a no-op there, a change for default
    steps = {"train.max_steps": 150}
    assert effective_overrides(cells, "params/sandbox.yaml", steps) == steps
    assert effective_overrides(cells[1:], "params/sandbox.yaml", steps) == {}
    # a key valid only with another (the cap needs a KL term) is kept, not probed into an error
    paired = {"train.kl_coef": 0.1, "train.kl_log_ratio_cap": 3.0}
    assert effective_overrides(cells, "params/sandbox.yaml", paired) == paired
