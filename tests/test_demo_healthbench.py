"""`ruscarl demo --suite healthbench`, short: the real path's notebooks 01 -> 05 end to end.

SmolLM2-135M-Instruct as the policy (LoRA), the vLLM judge of tests/conftest.py for rewards and
evaluation, 2 RL steps per arm (G=2) on sample prompts whose rubrics are cut to two criteria, one
evaluation prompt (the judge's CPU time is the cost). What is checked is what the suite wrote,
not learning.
"""

from __future__ import annotations

import dataclasses
import json
from html import escape
from pathlib import Path

import pandas as pd
import pytest
import yaml

from ruscarl_lib.data.read import load_sample_dataset
from ruscarl_lib.data.write import write_jsonl
from ruscarl_lib.train.run_folder import read_rollouts

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.real_judge, pytest.mark.timeout(1800)]


def test_healthbench_suite_runs_every_notebook_on_the_real_path(real_judge_server, tmp_path):
    from ruscarl_lib.demo import run_demo

    data = write_jsonl([dataclasses.replace(ex, rubric=ex.rubric[:2]) for ex in load_sample_dataset(3)],
                       tmp_path / "short.jsonl")
    params = yaml.safe_load((ROOT / "params" / "healthbench_cpu.yaml").read_text())
    params["data"]["path"] = str(data)
    params["judge"]["cache_path"] = str(tmp_path / "verdicts.sqlite")
    params["output"]["dir"] = str(tmp_path / "outputs")
    params["eval"].update(limit=1, max_new_tokens=24, n_bootstrap=50, batch_size=1)
    params["train"].update(max_completion_length=24, group_size=2, per_device_batch_size=2)
    params["schedule_view"]["group_size"] = 2
    params_file = tmp_path / "healthbench_short.yaml"
    params_file.write_text(yaml.safe_dump(params))

    before = real_judge_server.metrics()["vllm:request_success_total"]
    out = tmp_path / "demo"
    headline = run_demo(out, str(params_file), suite="healthbench", progress=False,
                        judge_url=real_judge_server.base_url)
    graded = real_judge_server.metrics()["vllm:request_success_total"] - before

    names = [Path(p).stem for p in headline["notebooks"]]
    assert names == ["01_rubric_exploration", "02_scaffold_tuning", "03_train_ruscarl", "03_train_baseline",
                     "04_evaluate_start", "04_evaluate_ruscarl", "04_evaluate_baseline", "05_analysis"]
    assert (out / "report.html").is_file() and json.loads((out / "headline.json").read_text())["heldout_score"]
    # both arms trained 2 steps from the same start, rewarded by the real judge
    for arm in ("ruscarl", "baseline"):
        run = out / "runs" / arm
        summary = json.loads((run / "summary.json").read_text())
        assert summary["rl_steps"] == 2, summary
        assert (run / "adapter" / "adapter_config.json").is_file()  # LoRA, not full weights
        saved = yaml.safe_load((run / "params.yaml").read_text())
        assert saved["train"]["model"] == "smollm2-135m-instruct"
        assert saved["judge"]["base_urls"] == [real_judge_server.base_url] and not saved["judge"]["server"]["start"]
        # the live check of the first RL step: every rollout reached the loss on its clean prompt
        contract = json.loads((run / "contract.json").read_text())
        assert contract["prompt"] == "clean" and contract["rollouts"] == 2 and contract["loss_rows"] >= 2, contract
        assert (contract["scaffolded"] >= 1) == (arm == "ruscarl"), contract
        # every rollout graded on both criteria by the real judge, its accounting logged per step
        table = read_rollouts(run)
        assert len(table) == 2 * 2 and all(len(v) == 2 and "?" not in v for v in table["judge_verdicts"]), table
        logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert any(float(m.get("judge/calls", 0)) > 0 for m in logged), logged[-1]
    # the start and both adapters were graded by the same judge on the same prompts, nothing failed
    prompts = {}
    for arm in ("start", "ruscarl", "baseline"):
        verdicts = pd.read_parquet(out / "evals" / arm / "verdicts.parquet")
        prompts[arm] = sorted(verdicts["example_id"].unique())
        assert len(verdicts) == 1 * 2 and not verdicts["failed"].any(), verdicts
        assert isinstance(headline["heldout_score"][arm], float)
    assert prompts["start"] == prompts["ruscarl"] == prompts["baseline"]
    # the evaluation report quotes what the judge said, criterion by criterion
    nb = json.loads((out / "notebooks" / "04_evaluate_ruscarl.ipynb").read_text())
    html = "".join("".join(o.get("data", {}).get("text/html", "")) for c in nb["cells"] for o in c.get("outputs", []))
    said = pd.read_parquet(out / "evals" / "ruscarl" / "verdicts.parquet")["explanation"].dropna()
    assert "explanation" in html and any(escape(e[:40], quote=False) in html for e in said if e), html[-2000:]
    assert graded >= 3 * 2  # at least the evaluations' verdicts reached the server
    # the training notebook showed the scaffolded system message of the real chat template
    nb = json.loads((out / "notebooks" / "03_train_ruscarl.ipynb").read_text())
    shown = "".join("".join(o.get("data", {}).get("text/html", "")) for c in nb["cells"] for o in c.get("outputs", []))
    assert "system message" in shown
