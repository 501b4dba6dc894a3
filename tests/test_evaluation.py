"""Evaluation: grading and report without a model, then generation and the whole run on a tiny one."""

from __future__ import annotations

import asyncio
import json
import math
import sys

import numpy as np
import pandas as pd
import pytest

from ruscarl_lib.common.backends import BackendUnavailable
from ruscarl_lib.evaluate.folder import EvalStateError
from ruscarl_lib.evaluate.generate import SamplingConfig, generate_responses, generate_vllm, load_eval_model
from ruscarl_lib.evaluate.report import build_report, response_scores
from ruscarl_lib.evaluate.grade import grade_responses, run_coroutine
from ruscarl_lib.evaluate.run import run_evaluation
from ruscarl_lib.judges.verdict import Judge, Verdict
from ruscarl_lib.params import Params
from ruscarl_lib.data.rubric import Criterion, RubricExample


class KeywordJudge(Judge):
    """Met iff the criterion's last word occurs in the response; criteria saying FAIL time out."""

    def __init__(self, name: str = "keyword") -> None:
        super().__init__()
        self.name = name
        self.seen: list[tuple[list[dict], str]] = []

    def fingerprint(self):
        return {"judge": self.name}

    async def _grade_item(self, item):
        self.seen.append((item.conversation, item.response))
        self.stats.calls += 1
        out = []
        for c in item.criteria:
            if "FAIL" in c.text:
                self.stats.record_failure("timeout")
                out.append(Verdict.failure("timeout", "no answer"))
            else:
                word = c.text.split()[-1].lower()
                out.append(Verdict(met=word in item.response.lower(), prompt_tokens=3, completion_tokens=1))
        return out


def _examples() -> list[RubricExample]:
    return [
        RubricExample(
            id="q1", messages=[{"role": "user", "content": "I have a headache."}],
            rubric=[Criterion("Mentions water", 5, ("axis:completeness",)),
                    Criterion("Mentions rest", 3, ("axis:accuracy",)),
                    Criterion("Suggests antibiotics", -4, ("axis:accuracy",))],
            tags=["theme:emergency"],
        ),
        RubricExample(
            id="q2", messages=[{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": "Rash after peanuts?"}],
            rubric=[Criterion("Mentions allergy", 4, ("axis:accuracy",)),
                    Criterion("Mentions emergency", 4, ("axis:completeness",)),
                    Criterion("Judge FAIL", 2, ("axis:accuracy",))],
            tags=["theme:hedging"],
        ),
        RubricExample(
            id="q3", messages=[{"role": "user", "content": "hello"}],
            rubric=[Criterion("Says hello", 1, ("axis:communication",))],
            tags=["theme:hedging"],
        ),
    ]


def _responses() -> pd.DataFrame:
    rows = [
        ("q1", 0, "Drink water and rest."),          # 8/8 = 1
        ("q1", 1, "Take antibiotics with water."),   # (5 - 4)/8
        ("q2", 0, "Could be an allergy."),           # exclude the failed one: 4/8
        ("q2", 1, "Call emergency services, allergy likely."),  # 8/8
        ("q3", 0, "hello there"),                    # 1
        ("q3", 1, "hi"),                             # 0
    ]
    return pd.DataFrame([{"example_id": e, "sample_index": k, "response": r, "n_tokens": len(r.split()),
                          "truncated": k == 1} for e, k, r in rows])


EXPECTED = {("q1", 0): 1.0, ("q1", 1): 1 / 8, ("q2", 0): 0.5, ("q2", 1): 1.0, ("q3", 0): 1.0, ("q3", 1): 0.0}


def test_grading_and_report_without_a_model():
    judge = KeywordJudge()
    verdicts = grade_responses(_responses(), _examples(), judge, progress=False)
    assert len(verdicts) == 2 * (3 + 3 + 1)
    assert verdicts["failed"].sum() == 2 and verdicts.loc[verdicts.failed, "met"].isna().all()
    # the judge saw each clean conversation, never a scaffold
    assert [conv for conv, _ in judge.seen[:2]] == [_examples()[0].messages] * 2
    scores = response_scores(verdicts)
    got = {(r.example_id, r.sample_index): r.score for r in scores.itertuples()}
    assert got == pytest.approx(EXPECTED)

    report = build_report(verdicts, _responses(), n_bootstrap=200, seed=0, judge_stats=judge.stats)
    assert report.score == pytest.approx(np.mean(list(EXPECTED.values())))
    assert report.n_scored == 6 and report.n_examples == 3 and report.n_responses == 6
    axis = report.axis_scores.set_index("tag")["score"]
    # accuracy: q1 s0 3/3, s1 -4/3 (only the penalty), q2 s0 4/4, s1 4/4 (failed excluded)
    assert axis["axis:accuracy"] == pytest.approx((1 + (-4 / 3) + 1 + 1) / 4)
    themes = report.theme_scores.set_index("tag")["score"]
    assert themes["theme:hedging"] == pytest.approx((0.5 + 1 + 1 + 0) / 4)
    assert report.verdicts["n_failed"] == 2 and report.verdicts["failures"] == {"timeout": 2}
    assert report.lengths["truncated_frac"] == pytest.approx(0.5)
    assert report.judge["calls"] == 6 and report.judge["failures"] == {"timeout": 2}
    # worst_case counts the failed positive as not met
    worst = response_scores(verdicts, "worst_case").set_index(["example_id", "sample_index"])["score"]
    assert worst[("q2", 0)] == pytest.approx(4 / 10)


def test_bootstrap_std_is_reproducible_and_seeded():
    verdicts = grade_responses(_responses(), _examples(), KeywordJudge(), progress=False)
    a = build_report(verdicts, _responses(), n_bootstrap=300, seed=7)
    b = build_report(verdicts, _responses(), n_bootstrap=300, seed=7)
    c = build_report(verdicts, _responses(), n_bootstrap=300, seed=8)
    assert a.std == b.std and a.std > 0 and a.std != c.std
    pd.testing.assert_frame_equal(a.tags, b.tags)


def test_report_bootstraps_over_prompts():
    from ruscarl_lib.judges.scoring import aggregate_score

    verdicts = grade_responses(_responses(), _examples(), KeywordJudge(), progress=False)
    report = build_report(verdicts, _responses(), n_bootstrap=500, seed=1)
    scores = response_scores(verdicts)
    by_prompt = aggregate_score(scores["score"], n_bootstrap=500, seed=1, groups=scores["example_id"])
    assert report.std == pytest.approx(by_prompt.std)
    assert report.std != pytest.approx(aggregate_score(scores["score"], n_bootstrap=500, seed=1).std)


def test_grading_resumes_from_saved_chunks(tmp_path):
    judge = KeywordJudge()
    first = grade_responses(_responses(), _examples(), judge, tmp_path, chunk_size=2, progress=False)
    assert judge.stats.calls == 6
    parts = sorted((tmp_path / "verdicts").glob("part-*.parquet"))
    assert len(parts) == 3
    # an interruption: chunk 1 never got written, a temporary file was left behind
    parts[1].unlink()
    (tmp_path / "verdicts" / ".part-000001.123.tmp").write_text("half")
    again = KeywordJudge()
    second = grade_responses(_responses(), _examples(), again, tmp_path, chunk_size=2, progress=False)
    assert again.stats.calls == 2  # only the missing chunk was graded
    assert not list((tmp_path / "verdicts").glob(".*.tmp"))
    pd.testing.assert_frame_equal(first, second)
    from ruscarl_lib.evaluate.grade import grading_stats

    assert grading_stats(tmp_path)["calls"] == 6  # accounting covers both sessions
    with pytest.raises(EvalStateError, match="other settings"):
        grade_responses(_responses(), _examples(), KeywordJudge("other"), tmp_path, chunk_size=2, progress=False)
    redone = grade_responses(_responses(), _examples(), KeywordJudge("other"), tmp_path, chunk_size=2,
                             overwrite=True, progress=False)
    assert len(redone) == len(first)
    regraded = KeywordJudge("other")  # same settings, overwrite: every chunk graded again, none reused
    grade_responses(_responses(), _examples(), regraded, tmp_path, chunk_size=2, overwrite=True, progress=False)
    assert regraded.stats.calls == 6


def test_unknown_example_ids_are_refused():
    bad = _responses().assign(example_id="nope")
    with pytest.raises(KeyError, match="unknown example"):
        grade_responses(bad, _examples(), KeywordJudge(), progress=False)


def test_run_coroutine_inside_a_running_loop():
    async def inner():
        return run_coroutine(lambda: asyncio.sleep(0, result=42))

    assert asyncio.run(inner()) == 42


def test_vllm_missing_gives_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(BackendUnavailable, match="eval.backend: transformers"):
        generate_vllm("m", [[{"role": "user", "content": "hi"}]], SamplingConfig(), [0])


# ------------------------------------------------------------------------------------------
# With a tiny local model
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    import torch
    from peft import LoraConfig, get_peft_model

    from ruscarl_lib.models.tiny import save_tiny_model

    root = tmp_path_factory.mktemp("models")
    base_dir = save_tiny_model(root / "base")
    model, tok = load_eval_model(str(base_dir))
    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], init_lora_weights=False))
    peft_model.save_pretrained(root / "adapter")
    tok.save_pretrained(root / "adapter")
    return base_dir, root / "adapter"


def test_generation_is_seeded_and_resumable(tiny_dirs, tmp_path):
    model, tok = load_eval_model(str(tiny_dirs[0]))
    cfg = SamplingConfig(n_samples=2, max_new_tokens=5, temperature=1.0, top_p=1.0, top_k=0,
                         batch_size=3, chunk_prompts=2, seed=3)
    examples = _examples()
    first = generate_responses(examples, tmp_path, cfg, model=model, tokenizer=tok, progress=False)
    assert len(first) == 6
    assert first[["example_id", "sample_index"]].values.tolist() == [
        ["q1", 0], ["q1", 1], ["q2", 0], ["q2", 1], ["q3", 0], ["q3", 1]]
    assert (first["n_tokens"] <= 5).all() and (first["n_tokens"] == first["response_ids"].map(len)).all()
    assert (first.loc[first.n_tokens == 5, "truncated"]).all()
    chunk1 = tmp_path / "generations" / "part-000001.parquet"
    chunk0_mtime = (tmp_path / "generations" / "part-000000.parquet").stat().st_mtime_ns
    chunk1.unlink()
    second = generate_responses(examples, tmp_path, cfg, model=model, tokenizer=tok, progress=False)
    pd.testing.assert_frame_equal(first, second)  # the regenerated chunk is identical (seeded)
    assert (tmp_path / "generations" / "part-000000.parquet").stat().st_mtime_ns == chunk0_mtime
    # another seed gives other samples, but only in a fresh folder
    with pytest.raises(EvalStateError):
        generate_responses(examples, tmp_path, SamplingConfig(**{**cfg.__dict__, "seed": 4}),
                           model=model, tokenizer=tok, progress=False)
    other = generate_responses(examples, tmp_path / "other", SamplingConfig(**{**cfg.__dict__, "seed": 4}),
                               model=model, tokenizer=tok, progress=False)
    assert other["response_ids"].map(tuple).tolist() != first["response_ids"].map(tuple).tolist()


def test_run_evaluation_end_to_end_with_adapter(tiny_dirs, tmp_path):
    base_dir, adapter_dir = tiny_dirs
    params = Params.model_validate({"eval": {
        "model": str(base_dir), "adapter": str(adapter_dir), "backend": "auto", "n_samples": 2,
        "max_new_tokens": 4, "batch_size": 4, "chunk_prompts": 2, "grade_chunk": 3, "n_bootstrap": 50,
    }})
    model, _ = load_eval_model(str(base_dir), str(adapter_dir))
    assert type(model).__name__.startswith("Peft")
    report = run_evaluation(params, tmp_path, examples=_examples(), judge=KeywordJudge(), progress=False)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["n_responses"] == 6 and saved["n_examples"] == 3
    assert saved["extra"]["adapter"] == str(adapter_dir) and saved["extra"]["backend"] == "transformers"
    assert saved["score"] == pytest.approx(report.score) and "axis:accuracy" in saved["tags"]
    scores = pd.read_parquet(tmp_path / "scores.parquet")
    assert len(scores) == 6 and {"score", "n_tokens"} <= set(scores.columns)
    verdicts = pd.read_parquet(tmp_path / "verdicts.parquet")
    assert len(verdicts) == 2 * 7
    assert saved["judge"]["calls"] == 6
    # what the judge said about the first answer, with each criterion's own text
    from ruscarl_lib.evaluate.grade import verdict_samples

    first = verdicts[["example_id", "sample_index"]].iloc[0]
    samples = verdict_samples(tmp_path, _examples(), n_answers=1)
    ex = next(e for e in _examples() if e.id == first["example_id"])
    assert len(samples) == len(ex.rubric) and set(samples["example_id"]) == {first["example_id"]}
    assert list(samples["criterion"]) == [c.text[:90] if len(c.text) <= 90 else c.text[:89] + "…" for c in ex.rubric]
    mine = verdicts[(verdicts.example_id == first["example_id"]) & (verdicts.sample_index == first["sample_index"])]
    assert list(samples["verdict"]) == [f"failed ({v.failure_kind})" if v.failed else ("met" if v.met else "not met")
                                        for v in mine.itertuples()]
    # a rerun finds everything done: no generation, no grading
    again = KeywordJudge()
    report2 = run_evaluation(params, tmp_path, examples=_examples(), judge=again, progress=False)
    assert again.stats.calls == 0 and report2.score == report.score
    assert not math.isnan(report.std)

    # novelty of the saved answers: trained (adapter on) over initial (adapter off)
    from ruscarl_lib.evaluate.run import run_novelty

    summary = run_novelty(params, tmp_path, examples=_examples())
    ratios = pd.read_parquet(tmp_path / "novelty.parquet")
    assert len(ratios) == 6 and summary["novelty"]["n"] == int((ratios["n_tokens"] > 0).sum())
    assert (ratios.loc[ratios.n_tokens > 0, "log_ratio"].abs() > 1e-6).all()
    assert json.loads((tmp_path / "novelty.json").read_text())["diversity"]["mean_cosine_distance"] is None
    assert len(pd.read_parquet(tmp_path / "diversity.parquet")) == 3
    plain = Params.model_validate({"eval": {"model": str(base_dir)}})
    with pytest.raises(ValueError, match="eval.adapter"):
        run_novelty(plain, tmp_path, examples=_examples())


def test_new_weights_under_the_same_adapter_path_are_not_reused(tiny_dirs, tmp_path):
    """Results are keyed by the weights evaluated, not by the adapter's path."""
    import shutil

    import torch
    from peft import LoraConfig, get_peft_model

    base_dir, adapter_dir = tiny_dirs
    adapter = tmp_path / "adapter"
    shutil.copytree(adapter_dir, adapter)
    params = Params.model_validate({"eval": {
        "model": str(base_dir), "adapter": str(adapter), "n_samples": 1, "max_new_tokens": 4,
        "batch_size": 3, "chunk_prompts": 3, "n_bootstrap": 0, "temperature": 0}})
    out = tmp_path / "eval"
    first = run_evaluation(params, out, examples=_examples(), judge=KeywordJudge(), progress=False)
    moved = tmp_path / "moved"  # the same weights elsewhere: still reused
    shutil.copytree(adapter, moved)
    same = params.model_copy(deep=True)
    same.eval.adapter = str(moved)
    judge = KeywordJudge()
    run_evaluation(same, out, examples=_examples(), judge=judge, progress=False)
    assert judge.stats.calls == 0

    model, _ = load_eval_model(str(base_dir))
    torch.manual_seed(1)  # other LoRA weights, saved where the first adapter was
    retrained = get_peft_model(model, LoraConfig(r=2, lora_alpha=64, target_modules=["q_proj", "v_proj"],
                                                 init_lora_weights=False))
    for p in retrained.parameters():
        if p.requires_grad:
            p.data.mul_(50)
    retrained.save_pretrained(adapter)
    with pytest.raises(EvalStateError, match="other settings"):
        run_evaluation(params, out, examples=_examples(), judge=KeywordJudge(), progress=False)
    judge = KeywordJudge()
    second = run_evaluation(params, out, examples=_examples(), judge=judge, progress=False, overwrite=True)
    assert judge.stats.calls == 3
    assert second.n_responses == first.n_responses
    assert json.loads((out / "generations" / "manifest.json").read_text())["fingerprint"]["weights"]["model"]


def test_grading_with_the_configured_rule_judge(tmp_path):
    from ruscarl_lib.judges import build_judge
    from ruscarl_lib.params import JudgeParams

    def rule(text, points, word):
        return Criterion(text, points, ("verifier:rule", "function:contains", f"parameters:{word}", "axis:accuracy"))

    examples = [RubricExample(id="r1", messages=[{"role": "user", "content": "Fever?"}],
                              rubric=[rule("Mentions rest", 6, "rest"), rule("Mentions fluids", 2, "fluids"),
                                      rule("Mentions antibiotics", -3, "antibiotics")])]
    responses = pd.DataFrame({"example_id": ["r1", "r1"], "sample_index": [0, 1],
                              "response": ["rest and fluids", "rest, antibiotics"], "n_tokens": [3, 2]})
    judge = build_judge(JudgeParams(kind="rule"))
    verdicts = grade_responses(responses, examples, judge, tmp_path, chunk_size=1, progress=False)
    assert (verdicts["source"] == "rule").all()
    assert response_scores(verdicts)["score"].tolist() == pytest.approx([1.0, 3 / 8])
    report = build_report(verdicts, responses, n_bootstrap=10)
    assert report.score == pytest.approx((1 + 3 / 8) / 2)


def test_vllm_path_with_a_stand_in_engine(monkeypatch, tmp_path):
    """The vLLM branch (no GPU here): one engine for all chunks, one seed per prompt, the adapter
    passed as a LoRA request, rows shaped like the HF ones."""
    import types

    calls = {"engines": 0, "seeds": [], "lora": []}

    class SamplingParams:
        def __init__(self, **kw):
            self.kw = kw

    class LLM:
        def __init__(self, **kw):
            calls["engines"] += 1
            assert kw["enable_lora"] is True

        def chat(self, messages, params, lora_request=None, use_tqdm=False):
            calls["lora"].append(lora_request)
            outs = []
            for conv, p in zip(messages, params):
                calls["seeds"].append(p.kw["seed"])
                comps = [types.SimpleNamespace(text=f"{conv[-1]['content']} #{k}", token_ids=[5, 6, k],
                                               finish_reason="length" if k else "stop")
                         for k in range(p.kw["n"])]
                outs.append(types.SimpleNamespace(outputs=comps, prompt_token_ids=[1, 2]))
            return outs

    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = LLM, SamplingParams
    lora_mod = types.ModuleType("vllm.lora.request")
    lora_mod.LoRARequest = lambda name, idx, path: ("lora", path)
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.lora", types.ModuleType("vllm.lora"))
    monkeypatch.setitem(sys.modules, "vllm.lora.request", lora_mod)

    cfg = SamplingConfig(n_samples=2, chunk_prompts=2, seed=1)
    out = generate_responses(_examples(), tmp_path, cfg, backend="vllm", model_name="base",
                             adapter=str(tmp_path / "adapter"), progress=False)
    assert calls["engines"] == 1 and len(calls["seeds"]) == 3 and len(set(calls["seeds"])) == 3
    assert calls["lora"] == [("lora", str(tmp_path / "adapter"))] * 2
    assert out["response"].tolist()[:2] == ["I have a headache. #0", "I have a headache. #1"]
    assert out["truncated"].tolist() == [False, True] * 3 and (out["n_tokens"] == 3).all()
    first_seeds = list(calls["seeds"])
    (tmp_path / "generations" / "part-000001.parquet").unlink()
    again = generate_responses(_examples(), tmp_path, cfg, backend="vllm", model_name="base",
                               adapter=str(tmp_path / "adapter"), progress=False)
    assert calls["seeds"][3:] == first_seeds[2:]  # the redone prompt gets the same seed
    pd.testing.assert_frame_equal(out, again)
