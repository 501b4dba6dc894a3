"""`train.report_to: tensorboard` reaches TRL: a tiny run's scalars can be read back."""

from __future__ import annotations

import pytest

from ruscarl_lib.models.tiny import save_tiny_model
from ruscarl_lib.train.smoke_task import rule_examples, toy_params
from ruscarl_lib.train.config import build_grpo_config
from ruscarl_lib.train.run import run_training

pytestmark = pytest.mark.slow


def test_report_to_is_passed_to_grpo_config(tmp_path):
    params = toy_params(save_tiny_model(tmp_path / "m"), tmp_path / "runs", "r", max_steps=2)
    assert build_grpo_config(params, tmp_path / "r").report_to == []
    params.train.report_to = "tensorboard"
    assert build_grpo_config(params, tmp_path / "r").report_to == ["tensorboard"]


def test_a_tiny_run_logs_its_scalars_to_tensorboard(tmp_path, monkeypatch):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    params = toy_params(save_tiny_model(tmp_path / "model"), tmp_path / "runs", "tb", max_steps=3)
    params.judge.cache_path = None
    params.train.report_to = "tensorboard"
    result = run_training(params, train_examples=rule_examples(4))
    files = list((tmp_path / "tb").rglob("events.out.tfevents.*"))
    assert files, list((tmp_path / "tb").rglob("*"))
    acc = event_accumulator.EventAccumulator(str(files[0].parent))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "train/reward" in tags, tags
    rewards = acc.Scalars("train/reward")
    assert len(rewards) == result.global_step  # one point per logged optimizer step
    assert any(t.startswith("train/scaffold/") for t in tags), tags
