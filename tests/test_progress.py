"""Progress events: what the kernel appends reaches the terminal line of the parent process."""

from __future__ import annotations

import io
import json

import pytest

from ruscarl_lib.common import progress
from ruscarl_lib.data.write import write_jsonl
from ruscarl_lib.params import save_params
from ruscarl_lib.notebook.reports import run_notebook
from ruscarl_lib.models.tiny import save_tiny_model
from ruscarl_lib.train.smoke_task import rule_examples, toy_params


def test_emit_is_a_no_op_without_the_variable(monkeypatch, tmp_path):
    monkeypatch.delenv(progress.ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)
    progress.emit("train", step=1, total=2)
    assert list(tmp_path.iterdir()) == []


def test_line_follows_the_events_and_half_written_lines_wait(monkeypatch, tmp_path):
    path = tmp_path / "events.jsonl"
    monkeypatch.setenv(progress.ENV_VAR, str(path))
    out = io.StringIO()
    line = progress.ProgressLine(path, "03_train", stream=out)
    progress.emit("cell", index=4, total=9)
    progress.emit("train", phase="rl", step=12, total=40, reward=0.25, eta_s=95)
    with path.open("a") as f:
        f.write('{"t": 1, "kind": "judge", "crit')  # a writer mid-line
    line.poll()
    assert [e["kind"] for e in line.events] == ["cell", "train"]
    text = progress.render(line.latest, "03_train", 61)
    assert text == "[03_train cell 4/9 1m01s] | RL step 12/40 reward 0.250 ETA 1m35s"
    with path.open("a") as f:
        f.write('eria": 480, "calls": 0, "failed": 3}\n')
    line.poll()
    assert line.latest["judge"]["criteria"] == 480
    assert progress.render(line.latest, "x", 1).endswith("| judge 480 criteria, 3 failed")
    # evaluation newer than training: the line shows evaluation
    progress.emit("generate", done=64, total=128)
    line.poll()
    assert "generating 64/128 answers" in progress.render(line.latest, "x", 1)


@pytest.mark.slow
def test_a_tiny_training_notebook_reports_its_steps_to_the_parent(tmp_path, capsys):
    model = save_tiny_model(tmp_path / "model")
    params = toy_params(model, tmp_path / "runs", "unused", max_steps=3)
    params.data.path = str(write_jsonl(rule_examples(4), tmp_path / "toy.jsonl"))
    params.judge.cache_path = None
    params_file = save_params(params, tmp_path / "toy.yaml")
    run_notebook("03_train_grpo", tmp_path / "03.ipynb", {
        "params_file": str(params_file), "run_name": "r", "table_every": 10}, progress=True)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("[03 ")]
    assert lines, err[-2000:]
    final = lines[-1]
    assert "cell " in final and "/" in final
    # the last training event: step 3 of 3 with its reward, and the rule judge's criteria count
    assert any("RL step 3/3 reward" in ln for ln in lines), lines
    assert any("judge " in ln and "criteria" in ln for ln in lines), lines
    assert "without encryption" not in err
    assert not (tmp_path / "03.progress.jsonl").exists()  # removed after a successful run
    json.loads((tmp_path / "runs" / "r" / "summary.json").read_text())
