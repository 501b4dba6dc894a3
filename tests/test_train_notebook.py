"""Notebook 03 trains a tiny local model for a few steps through papermill, both arms."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from ruscarl_lib.data.write import write_jsonl
from ruscarl_lib.params import save_params
from ruscarl_lib.notebook.reports import run_notebook
from ruscarl_lib.train.run_folder import read_metrics, read_rollouts
from ruscarl_lib.scaffold.schedule import ScaffoldSchedule
from ruscarl_lib.models.tiny import save_tiny_model
from ruscarl_lib.train.smoke_task import rule_examples, toy_params

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_nb")
    model = save_tiny_model(root / "model")
    data = write_jsonl(rule_examples(4), root / "toy.jsonl")
    params = toy_params(model, root / "runs", "unused", max_steps=3)
    params.data.path = str(data)
    params.judge.cache_path = None
    return root, save_params(params, root / "toy.yaml")


def _text_outputs(nb_path: Path) -> str:
    nb = nbformat.read(nb_path, as_version=4)
    assert not [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    parts = []
    for c in nb.cells:
        for o in c.get("outputs", []):
            parts.append(o.get("text", "") if "text" in o else json.dumps(o.get("data", {})))
    return "\n".join(parts)


@pytest.mark.parametrize("scaffold_enabled", [True, False], ids=["ruscarl", "baseline"])
def test_training_notebook_runs_and_writes_the_run_folder(setup, scaffold_enabled):
    root, params_file = setup
    name = "ruscarl" if scaffold_enabled else "baseline"
    executed = run_notebook("03_train_grpo", root / f"{name}.ipynb", {
        "params_file": str(params_file), "run_name": name, "scaffold_enabled": scaffold_enabled,
        "table_every": 2}, progress=False)
    text = _text_outputs(executed)
    run_dir = root / "runs" / name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rl_steps"] == 3 and summary["scaffold_enabled"] is scaffold_enabled
    assert (run_dir / "adapter" / "adapter_config.json").exists()
    assert (run_dir / "curves.png").stat().st_size > 0
    # the group tables printed while training (steps 1 and 2), and the first group's prompts
    assert "RL step 1" in text and "RL step 2" in text and "clean prompt, no scaffold" in text
    rollouts = read_rollouts(run_dir)
    assert sorted(rollouts["rl_step"].unique()) == [1, 2, 3]
    schedule = ScaffoldSchedule(step_decay="linear", enabled=scaffold_enabled)
    expected = [schedule.ratio(i, 4, s, 3) for s, i in zip(rollouts["rl_step"], rollouts["group_position"])]
    assert rollouts["scaffold_ratio"].tolist() == pytest.approx(expected)
    assert (rollouts["n_shown"] > 0).any() == scaffold_enabled
    metrics = read_metrics(run_dir)
    assert summary["scaffold_ratio_mean"] == pytest.approx(metrics["scaffold/ratio_mean"].mean())
    assert isinstance(metrics, pd.DataFrame) and len(metrics) >= 3


def test_rerun_with_other_settings_refuses_and_fresh_starts_over(setup):
    """The notebook path of the run-folder fingerprint: 3x the learning rate into a used run
    folder fails naming the key, with params.yaml untouched; `fresh=True` trains afresh."""
    from papermill.exceptions import PapermillExecutionError

    root, params_file = setup
    base = {"params_file": str(params_file), "run_name": "rerun", "table_every": 10}
    run_notebook("03_train_grpo", root / "rerun1.ipynb", base, progress=False)
    run_dir = root / "runs" / "rerun"
    saved = (run_dir / "params.yaml").read_text()
    with pytest.raises(PapermillExecutionError, match=r"train\.learning_rate: 0\.001 -> 0\.003"):
        run_notebook("03_train_grpo", root / "rerun2.ipynb", {**base, "learning_rate": 3e-3}, progress=False)
    assert (run_dir / "params.yaml").read_text() == saved
    run_notebook("03_train_grpo", root / "rerun3.ipynb", {**base, "learning_rate": 3e-3, "fresh": True},
                 progress=False)
    assert "0.003" in (run_dir / "params.yaml").read_text()
    assert json.loads((run_dir / "summary.json").read_text())["rl_steps"] == 3
