"""The judge client against a real `vllm serve` (vLLM's CPU build, SmolLM2-135M-Instruct).

The fake server (tests/judge_server.py) scripts faults; this one is the server users run. Its
verdicts are close to random (a 135M judge): what is checked is the plumbing, with vLLM's
own /metrics as the independent account of what reached the server.
"""

from __future__ import annotations

import asyncio

import pytest

from ruscarl_lib.judges import GradingItem, build_judge
from ruscarl_lib.params import JudgeParams
from ruscarl_lib.data.rubric import Criterion

pytestmark = [pytest.mark.slow, pytest.mark.real_judge, pytest.mark.timeout(900)]

CONV = [{"role": "user", "content": "I twisted my ankle an hour ago and it is swollen. What should I do?"}]
CRITERIA = [Criterion("Advises resting the ankle and applying ice.", 5),
            Criterion("Suggests seeing a doctor if the user cannot put weight on it.", 4),
            Criterion("Recommends running on the ankle to test it.", -5)]
RESPONSES = ["Rest it, put ice on it for 20 minutes at a time, and see a doctor if you cannot stand on it.",
             "Go for a run to see whether it still hurts."]


def _judge_params(server, tmp_path, **kw) -> JudgeParams:
    base = dict(kind="openai", cache_path=str(tmp_path / "verdicts.sqlite"), mode="per_criterion",
                max_concurrency=3, max_tokens=200, explanation_max_chars=160, timeout_s=180, max_retries=1)
    base.update(kw)
    return server.judge_params(JudgeParams(**base))


def _grade(judge, items):
    async def go():
        try:
            return await judge.grade_many(items)
        finally:
            await judge.llm.inner.aclose()
    return asyncio.run(go())


def test_real_server_grades_a_batch_bounded_accounted_and_cached(real_judge_server, tmp_path):
    server = real_judge_server
    params = _judge_params(server, tmp_path)
    items = [GradingItem(CONV, r, CRITERIA) for r in RESPONSES]

    before = server.metrics()
    judge = server.attach(build_judge(params))
    verdicts = _grade(judge, items)
    after = server.metrics()
    stats = judge.stats
    sent = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}

    # every verdict parsed from the server's structured output (no failure of any kind)
    flat = [v for row in verdicts for v in row]
    assert len(flat) == 6 and all(v.source == "judge" and not v.failed for v in flat), \
        [(v.source, v.failure_kind, v.explanation[:80]) for v in flat]
    assert not any(stats.failures.values()) and not any(stats.errors.values()), (stats.failures, stats.errors)
    # concurrency was used and bounded
    assert stats.max_in_flight == 3
    # usage and latency accounted, and equal to what the server itself counted
    assert stats.calls == 6 and sent["vllm:request_success_total"] == 6
    assert stats.prompt_tokens == sent["vllm:prompt_tokens_total"] > 6 * 300
    assert stats.completion_tokens == sent["vllm:generation_tokens_total"] > 0
    assert all(v.latency_s > 0 and v.prompt_tokens > 0 for v in flat)
    assert sum(v.prompt_tokens for v in flat) == stats.prompt_tokens
    assert stats.call_latency_s > 0

    # a regrade is answered by the verdict cache: nothing reaches the server
    again = server.attach(build_judge(params))
    before = server.metrics()
    cached = _grade(again, items)
    after = server.metrics()
    assert after["vllm:request_success_total"] == before["vllm:request_success_total"]
    assert again.stats.calls == 0
    assert [[v.met for v in row] for row in cached] == [[v.met for v in row] for row in verdicts]
    assert all(v.source == "cache" for row in cached for v in row)


def test_real_server_answers_a_whole_rubric_in_one_call(real_judge_server, tmp_path):
    """mode `all`: one request carries every criterion and gives one verdict per criterion
    (the batched mode shares this code path with k < n)."""
    server = real_judge_server
    params = _judge_params(server, tmp_path, mode="all", cache_path=None, max_tokens=400,
                           explanation_max_chars=120, max_retries=1)
    judge = server.attach(build_judge(params))

    async def go():
        try:
            return await judge.grade_many([GradingItem(CONV, RESPONSES[0], CRITERIA)])
        finally:
            await judge.llm.aclose()
    row = asyncio.run(go())[0]
    assert len(row) == 3
    parsed = [v for v in row if not v.failed]
    # a 135M grader may leave a criterion out of a multi-criterion answer: that is asked again
    # and, failing that, a failure counted by kind, never silently dropped
    failed = [v for v in row if v.failed]
    assert sum(judge.stats.failures.values()) == len(failed)
    assert all(v.failure_kind for v in failed) and len(parsed) + len(failed) == 3
    assert 1 <= judge.stats.calls <= 2  # one call, plus at most one re-ask for what was missing
