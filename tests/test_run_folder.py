"""Where a run keeps its final weights, and how an evaluation finds them from the run folder."""

from __future__ import annotations

import pytest

from ruscarl_lib.train.run_folder import final_weights_dir, trained_weights


def _run(root, *subdirs):
    root.mkdir()
    (root / "params.yaml").write_text("seed: 0\n")
    (root / "metrics.jsonl").write_text("")
    for d in subdirs:
        (root / d).mkdir()
    return root


def test_the_weights_folder_is_named_for_what_it_holds(tmp_path):
    assert final_weights_dir(tmp_path, "lora") == tmp_path / "adapter"
    assert final_weights_dir(tmp_path, "full") == tmp_path / "model"


def test_a_run_folder_resolves_to_its_final_weights(tmp_path):
    assert trained_weights(_run(tmp_path / "lora", "adapter")) == tmp_path / "lora" / "adapter"
    assert trained_weights(_run(tmp_path / "full", "model")) == tmp_path / "full" / "model"
    weights = tmp_path / "full" / "model"
    assert trained_weights(weights) == weights  # a weights folder is itself
    with pytest.raises(FileNotFoundError, match="has no final weights"):
        trained_weights(_run(tmp_path / "unfinished"))
    with pytest.raises(FileNotFoundError, match="not a training run folder"):
        trained_weights(weights, run_folder=True)
