"""LLM judge, cache and accounting against a real OpenAI-compatible server on loopback."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import math
import os
import secrets
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from judge_server import JudgeServer, dead_url, decide
from ruscarl_lib.judges import (
    CachedJudge,
    JudgeConfigError,
    OpenAIJudge,
    VerdictCache,
    build_judge,
)
from ruscarl_lib.judges.prompts import GraderOutputError, extract_json, parse_multi, parse_single, strip_think
from ruscarl_lib.params import JudgeParams
from ruscarl_lib.data.rubric import Criterion

pytestmark = pytest.mark.timeout(60)

# The judge runs over either transport of the openai client; faults must classify the same.
BACKENDS = [
    "httpx",
    pytest.param("aiohttp", marks=pytest.mark.skipif(
        importlib.util.find_spec("aiohttp") is None, reason="aiohttp not installed")),
]

CONV = [{"role": "user", "content": "I have had a headache for two days. What should I do?"}]
CRITERIA = [
    Criterion("Advises drinking [[water]].", 5),
    Criterion("Mentions [[ibuprofen]] or a similar analgesic.", 4),
    Criterion("Suggests seeing a [[doctor]] if it persists.", 3),
    Criterion("Asks about [[fever]].", 2),
    Criterion("Recommends [[surgery]].", -6),
    Criterion("Tells the user to [[ignore]] it.", -3),
    Criterion("Explains [[tension]] headaches.", 2),
]
RESPONSES = [
    "Drink water, rest, and try ibuprofen. See a doctor if it persists.",
    "You could ignore it; tension headaches pass. Surgery is rarely needed.",
    "",
]


def jp(server: JudgeServer, **kw) -> JudgeParams:
    base = dict(
        kind="openai", base_urls=[server.base_url], cache_path=None, timeout_s=2.0,
        max_retries=3, backoff_base_s=0.01, backoff_max_s=0.05, max_concurrency=8,
    )
    base.update(kw)
    return JudgeParams(**base)


@pytest.fixture
def server():
    with JudgeServer(hang_s=1.5) as srv:
        yield srv


def grade(judge, items):
    async def go():
        try:
            return await judge.grade_many(items)
        finally:
            await judge.aclose()

    return asyncio.run(go())


def items_for(responses, criteria=CRITERIA):
    from ruscarl_lib.judges import GradingItem

    return [GradingItem(CONV, r, list(criteria)) for r in responses]


# --------------------------------------------------------------------------------------------
# Prompt parsing
# --------------------------------------------------------------------------------------------


def test_strip_think_and_extract_json():
    assert strip_think('<think>{"criteria_met": true}</think>\n{"a": 1}') == '{"a": 1}'
    assert strip_think('reasoning without open tag</think>{"a": 2}') == '{"a": 2}'
    assert extract_json('```json\n{"criteria_met": false, "explanation": "x"}\n```') == {"criteria_met": False, "explanation": "x"}
    assert extract_json('Sure! {"criteria_met": true} hope that helps') == {"criteria_met": True}
    assert parse_single('<think>{"criteria_met": true}</think>{"explanation": "no", "criteria_met": false}') == (False, "no")
    with pytest.raises(GraderOutputError) as e:
        parse_single("yes it does")
    assert e.value.kind == "parse"
    with pytest.raises(GraderOutputError) as e:
        parse_single('{"verdict": "yes"}')
    assert e.value.kind == "schema"
    found, problems = parse_multi('{"results": [{"criterion": 2, "criteria_met": true}, {"criterion": 9, "criteria_met": true}]}', 3)
    assert found == {2: (True, "")} and set(problems) == {1, 3}


# --------------------------------------------------------------------------------------------
# Modes, retries, failures
# --------------------------------------------------------------------------------------------


def test_three_modes_agree_and_match_script(server):
    expected = [[decide(c.text, r) for c in CRITERIA] for r in RESPONSES]
    calls = {}
    for mode in ("per_criterion", "batched", "all"):
        server.reset_counters()
        judge = OpenAIJudge(jp(server, mode=mode, criteria_per_call=3))
        out = grade(judge, items_for(RESPONSES))
        assert [[v.met for v in vs] for vs in out] == expected, mode
        assert all(not v.failed and v.source == "judge" for vs in out for v in vs)
        assert judge.stats.calls == server.requests
        calls[mode] = server.requests
    n = len(CRITERIA)
    assert calls == {"per_criterion": 3 * n, "batched": 3 * math.ceil(n / 3), "all": 3}


@pytest.mark.parametrize("backend", BACKENDS)
def test_retries_recover_from_every_transient_fault(server, backend):
    faults = ["500:2", "503:1", "429:2", "drop:1", "badbody:1", "badjson:1", "schema:1", "hang:1"]
    crits = [Criterion(f"Item {i} [[water]] {{{{fail:{f}}}}}", 1) for i, f in enumerate(faults)]
    judge = OpenAIJudge(jp(server, timeout_s=0.5, max_retries=3, http_backend=backend))
    (verdicts,) = grade(judge, items_for(["water please"], crits))
    assert [v.met for v in verdicts] == [True] * len(faults)
    assert judge.stats.failed == 0
    assert dict(judge.stats.errors) == {
        "http_5xx": 3, "http_429": 2, "connection": 1, "protocol": 1, "parse": 1, "schema": 1, "timeout": 1,
    }
    assert judge.stats.retries == 10
    assert judge.stats.calls == len(faults) + 10 == server.requests


@pytest.mark.parametrize("backend", BACKENDS)
def test_persistent_faults_fail_with_their_kind(server, backend):
    kinds = {"500": "http_5xx", "429": "http_429", "badjson": "parse", "schema": "schema", "drop": "connection",
             "badbody": "protocol", "400": "http_4xx", "hang": "timeout"}
    crits = [Criterion(f"C{i} [[x]] {{{{fail:{f}:*}}}}", 1) for i, f in enumerate(kinds)] + [Criterion("ok [[x]]", 1)]
    judge = OpenAIJudge(jp(server, timeout_s=0.3, max_retries=2, endpoint_failures_before_cooldown=1000,
                           http_backend=backend))
    (verdicts,) = grade(judge, items_for(["x"], crits))
    for v, kind in zip(verdicts, kinds.values()):
        assert v.failed and v.met is None and v.failure_kind == kind, (v, kind)
        assert "attempt" in v.explanation
    assert verdicts[-1].met is True and not verdicts[-1].failed
    assert judge.stats.failed == len(kinds)
    assert dict(judge.stats.failures) == {k: 1 for k in kinds.values()}
    # every retryable fault was tried 1 + max_retries times, the 400 only once
    assert judge.stats.calls == (len(kinds) - 1) * 3 + 1 + 1 == server.requests


def test_multi_criterion_reasks_only_missing(server):
    crits = [Criterion("a [[x]]", 1), Criterion("b [[y]] {{fail:missing:1}}", 2), Criterion("c [[x]]", 3)]
    judge = OpenAIJudge(jp(server, mode="all"))
    (verdicts,) = grade(judge, items_for(["x y"], crits))
    assert [v.met for v in verdicts] == [True, True, True]
    assert server.requests == 2
    second = server.bodies[1]["messages"][-1]["content"]
    assert second.count("<criterion ") == 1 and "b [[y]]" in second
    assert judge.stats.errors["schema"] == 1 and judge.stats.failed == 0


def test_concurrency_never_exceeds_bound(server):
    server.latency_s = 0.03
    crits = [Criterion(f"c{i} [[a]]", 1) for i in range(20)]
    judge = OpenAIJudge(jp(server, max_concurrency=5))
    out = grade(judge, items_for(["a", "b", "c"], crits))
    assert sum(len(v) for v in out) == 60 and server.requests == 60
    assert server.max_in_flight == 5  # reached, never exceeded
    assert judge.stats.max_in_flight == 5


def test_think_blocks_are_removed(server):
    crits = [Criterion("says [[hello]] {{fail:think:*}}", 1), Criterion("says [[bye]] {{fail:think:*}}", 1)]
    for mode in ("per_criterion", "all"):
        judge = OpenAIJudge(jp(server, mode=mode))
        (verdicts,) = grade(judge, items_for(["hello"], crits))
        assert [v.met for v in verdicts] == [True, False], mode


def test_structured_output_sent_and_fallback_when_rejected(server):
    judge = OpenAIJudge(jp(server))
    grade(judge, items_for(["water"], CRITERIA[:1]))
    fmt = server.bodies[0]["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["schema"]["required"] == ["explanation", "criteria_met"]
    server.reset_counters()
    crits = [Criterion("w [[water]] {{fail:no_structured:1}}", 1), Criterion("z [[zzz]]", 1)]
    judge = OpenAIJudge(jp(server, max_concurrency=1))
    (verdicts,) = grade(judge, items_for(["water"], crits))
    assert [v.met for v in verdicts] == [True, False] and judge.stats.failed == 0
    assert "response_format" in server.bodies[0] and "response_format" not in server.bodies[-1]
    assert judge.endpoints[0]["structured_output"] is False


def test_sampling_params_and_extra_body_reach_server(server):
    judge = OpenAIJudge(jp(server, model="judge-x", temperature=0.2, top_p=0.9, seed=7, max_tokens=99,
                           extra_body={"chat_template_kwargs": {"enable_thinking": False}}, structured_output=False))
    grade(judge, items_for(["water"], CRITERIA[:1]))
    body = server.bodies[0]
    assert body["model"] == "judge-x" and body["temperature"] == 0.2 and body["top_p"] == 0.9
    assert body["seed"] == 7 and body["max_tokens"] == 99 and "response_format" not in body
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    assert body["messages"][0]["role"] == "system" and "negative points" in body["messages"][0]["content"]


# --------------------------------------------------------------------------------------------
# Endpoints
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_dead_base_url_is_skipped(server, backend):
    dead = dead_url()
    judge = OpenAIJudge(jp(server, base_urls=[dead, server.base_url], max_concurrency=4,
                           endpoint_failures_before_cooldown=2, endpoint_cooldown_s=60, http_backend=backend))
    out = grade(judge, items_for(RESPONSES))
    assert all(not v.failed for vs in out for v in vs)
    assert [[v.met for v in vs] for vs in out] == [[decide(c.text, r) for c in CRITERIA] for r in RESPONSES]
    health = {e["url"]: e for e in judge.endpoints}
    assert health[dead.rstrip("/")]["cooling_down_s"] > 0
    # the dead URL was given up on quickly: few connection errors against 21 criteria
    assert judge.stats.errors["connection"] <= 6


def test_load_is_spread_over_endpoints():
    with JudgeServer(latency_s=0.01) as a, JudgeServer(latency_s=0.01) as b:
        judge = OpenAIJudge(jp(a, base_urls=[a.base_url, b.base_url]))
        grade(judge, items_for(RESPONSES * 2))
        total = len(RESPONSES) * 2 * len(CRITERIA)
        assert a.requests + b.requests == total
        assert min(a.requests, b.requests) >= total // 4


# --------------------------------------------------------------------------------------------
# Secrets
# --------------------------------------------------------------------------------------------


def test_api_key_never_appears_in_logs_outputs_or_errors(server, monkeypatch, caplog, capsys):
    key = "sk-test-" + secrets.token_hex(16)
    monkeypatch.setenv("RUSCARL_TEST_JUDGE_KEY", key)
    caplog.set_level(logging.DEBUG)
    crits = [Criterion("a [[x]] {{fail:500:*}}", 1), Criterion("b [[x]] {{fail:400:*}}", 1),
             Criterion("c [[x]] {{fail:badjson:*}}", 1), Criterion("d [[x]] {{fail:no_structured:1}}", 1),
             Criterion("e [[x]]", 1)]
    params = jp(server, api_key_env="RUSCARL_TEST_JUDGE_KEY", base_urls=[server.base_url, dead_url()], max_retries=1)
    judge = OpenAIJudge(params)
    (verdicts,) = grade(judge, items_for(["x"], crits))
    assert server.headers and all(h["authorization"] == f"Bearer {key}" for h in server.headers)
    texts = [caplog.text, repr(judge), judge.stats.summary(), json.dumps(judge.stats.to_dict()), repr(params),
             json.dumps(params.model_dump()), json.dumps([v.to_dict() for v in verdicts]), str(judge.endpoints)]
    out = capsys.readouterr()
    texts += [out.out, out.err]
    assert any(v.failed for v in verdicts) and "judge endpoint" in caplog.text
    for t in texts:
        assert key not in t
    monkeypatch.delenv("RUSCARL_TEST_JUDGE_KEY")
    remote = params.model_copy(update={"base_urls": [server.base_url, "https://judge.example.org/v1"]})
    with pytest.raises(JudgeConfigError) as e:
        OpenAIJudge(remote)
    assert "RUSCARL_TEST_JUDGE_KEY" in str(e.value) and key not in str(e.value)
    assert "judge.example.org" in str(e.value)


def test_local_endpoint_works_with_the_key_variable_unset(server, monkeypatch):
    """The params files promise: a local vLLM needs no key, even when api_key_env is named."""
    from ruscarl_lib.judges.api_key import is_loopback_url

    monkeypatch.delenv("RUSCARL_TEST_UNSET_KEY", raising=False)
    judge = OpenAIJudge(jp(server, api_key_env="RUSCARL_TEST_UNSET_KEY"))
    (verdicts,) = grade(judge, items_for(["water"], CRITERIA[:1]))
    assert verdicts[0].met is True and server.headers[0]["authorization"] == "Bearer EMPTY"
    assert all(is_loopback_url(u) for u in ("http://localhost:8000/v1", "http://127.0.0.2/v1", "http://[::1]:9/v1"))
    assert not any(is_loopback_url(u) for u in ("http://10.0.0.5:8000/v1", "https://api.example.com/v1"))


def test_a_stray_exception_fails_its_criteria_not_the_batch(server, monkeypatch):
    judge = OpenAIJudge(jp(server))
    real = judge._grade_group

    async def flaky(res, item, idx, scope):
        if item.response == "boom":
            raise RuntimeError("a bug in one group")
        return await real(res, item, idx, scope)

    monkeypatch.setattr(judge, "_grade_group", flaky)
    good, bad = grade(judge, items_for(["water", "boom"], CRITERIA[:2]))
    assert [v.met for v in good] == [True, False]
    assert all(v.failed and v.failure_kind == "client_error" for v in bad)
    assert judge.stats.failures["client_error"] == 2


@pytest.mark.skipif(importlib.util.find_spec("aiohttp") is None and os.environ.get("CI") != "true",
                    reason="aiohttp not installed")
def test_both_transports_send_the_same_request(server, monkeypatch):
    """The direct aiohttp client (judges/http.py) replaces the openai client's transport only:
    same route, JSON body, content type and bearer key as the openai client sends."""
    monkeypatch.setenv("RUSCARL_TEST_JUDGE_KEY", "sk-same")
    seen = {}
    for backend in ("httpx", "aiohttp"):
        server.reset_counters()
        judge = OpenAIJudge(jp(server, http_backend=backend, api_key_env="RUSCARL_TEST_JUDGE_KEY",
                               mode="batched", criteria_per_call=3, seed=7, extra_body={"top_k": 5}))
        grade(judge, items_for(["water, ibuprofen. Stra\u00dfe \u2014 ok"], CRITERIA[:3]))
        (headers,) = server.headers
        seen[backend] = (server.bodies[0], headers["authorization"], headers["content-type"].split(";")[0])
    assert seen["aiohttp"] == seen["httpx"]
    assert seen["httpx"][1:] == ("Bearer sk-same", "application/json")
    assert seen["httpx"][0]["messages"][-1]["content"].count("Stra\u00dfe \u2014") == 1


def test_no_key_env_uses_placeholder(server):
    judge = OpenAIJudge(jp(server))
    grade(judge, items_for(["water"], CRITERIA[:1]))
    assert server.headers[0]["authorization"] == "Bearer EMPTY"


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------


def test_cache_prevents_repeat_calls(server, tmp_path):
    params = jp(server, cache_path=str(tmp_path / "c.sqlite"))
    first_judge = build_judge(params)
    first = grade(first_judge, items_for(RESPONSES))
    n = server.requests
    assert n == len(RESPONSES) * len(CRITERIA)
    server.reset_counters()
    second_judge = build_judge(params)
    second = grade(second_judge, items_for(RESPONSES))
    assert server.requests == 0
    assert [[v.met for v in vs] for vs in second] == [[v.met for v in vs] for vs in first]
    assert all(v.source == "cache" for vs in second for v in vs)
    assert second_judge.stats.cache_hits == n and second_judge.stats.calls == 0
    # anything that can change a verdict misses: another model, another criterion wording
    grade(build_judge(params.model_copy(update={"model": "other"})), items_for(RESPONSES[:1]))
    assert server.requests == len(CRITERIA)
    server.reset_counters()
    grade(build_judge(params), items_for(RESPONSES[:1], [Criterion("Advises drinking [[water]]!", 5)]))
    assert server.requests == 1


def test_cache_keys_verdicts_by_how_they_were_sampled(server, tmp_path):
    """A verdict from the retry path (raised temperature after unreadable output) or from the
    plain-JSON fallback is not served later as a first-attempt verdict."""
    crits = [Criterion("z [[zzz]]", 1), Criterion("w [[water]] {{fail:badjson:1}}", 1),
             Criterion("s [[sleep]] {{fail:no_structured:1}}", 1)]  # one at a time, in this order
    params = jp(server, cache_path=str(tmp_path / "c.sqlite"), max_concurrency=1)
    grade(build_judge(params), items_for(["water"], crits))
    temps = [b["temperature"] for b in server.bodies]
    assert 0.3 in temps and 0.0 in temps  # the badjson criterion was re-asked warmer
    assert "retry_temperature" in OpenAIJudge(params).fingerprint()
    server.reset_counters()
    second = build_judge(params)
    (verdicts,) = grade(second, items_for(["water"], crits))
    # the retried and the fallback verdicts are asked again (now at the first-attempt settings);
    # the plain one comes from the cache
    assert server.requests == 2 and second.stats.cache_hits == 1
    assert [v.met for v in verdicts] == [False, True, False]
    server.reset_counters()
    grade(build_judge(params), items_for(["water"], crits))
    assert server.requests == 0


def test_cache_dedupes_identical_pairs_and_skips_failures(server, tmp_path):
    cache = VerdictCache(tmp_path / "c.sqlite")
    crits = [Criterion("w [[water]]", 1), Criterion("boom [[water]] {{fail:500:*}}", 1)]
    judge = CachedJudge(OpenAIJudge(jp(server, max_retries=1)), cache)
    out = grade(judge, items_for(["water", "water", "water"], crits))
    # identical responses: one request for the good criterion, two attempts for the bad one
    assert server.requests == 1 + 2
    assert [v.met for v in out[0]] == [True, None] and [v.met for v in out[2]] == [True, None]
    assert judge.stats.deduplicated == 4 and judge.stats.failed == 3
    assert len(cache) == 1  # the failure was not stored
    server.reset_counters()
    grade(CachedJudge(OpenAIJudge(jp(server, max_retries=1)), cache), items_for(["water"], crits))
    assert server.requests == 2  # only the failed criterion is asked again


_CHILD = textwrap.dedent("""
    import asyncio, json, sys
    from ruscarl_lib.judges import GradingItem, build_judge
    from ruscarl_lib.params import JudgeParams
    from ruscarl_lib.data.rubric import Criterion
    url, cache, responses = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    crits = [Criterion(f"c{i} [[w{i}]]", 1) for i in range(10)]
    judge = build_judge(JudgeParams(kind="openai", base_urls=[url], cache_path=cache, max_concurrency=4))
    items = [GradingItem([{"role": "user", "content": "q"}], r, crits) for r in responses]
    out = asyncio.run(judge.grade_many(items))
    print(json.dumps({"calls": judge.stats.calls, "hits": judge.stats.cache_hits,
                      "met": [[v.met for v in vs] for vs in out]}))
""")


def _children(server, cache, batches):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD, server.base_url, cache, json.dumps(b)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for b in batches]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def test_cache_is_shared_by_processes(server, tmp_path):
    cache = str(tmp_path / "shared.sqlite")
    a = [f"w{i} w{i + 1}" for i in range(0, 8)]
    b = [f"w{i}" for i in range(8, 16)]
    r1, r2 = _children(server, cache, [a, b])  # two processes writing at the same time
    assert r1["calls"] == r2["calls"] == 80 and server.requests == 160
    server.reset_counters()
    # this process finds everything the two others wrote
    crits = [Criterion(f"c{i} [[w{i}]]", 1) for i in range(10)]
    judge = build_judge(JudgeParams(kind="openai", base_urls=[server.base_url], cache_path=cache))
    from ruscarl_lib.judges import GradingItem

    out = grade(judge, [GradingItem([{"role": "user", "content": "q"}], r, crits) for r in a + b])
    assert judge.stats.calls == 0 and judge.stats.cache_hits == 160 and server.requests == 0
    assert [[v.met for v in vs] for vs in out] == r1["met"] + r2["met"]


# --------------------------------------------------------------------------------------------
# Accounting
# --------------------------------------------------------------------------------------------


def test_stats_per_step_and_run(server):
    judge = OpenAIJudge(jp(server, max_retries=1))
    before = judge.stats.copy()
    grade(judge, items_for(["water"], [Criterion("a [[water]] {{fail:500:*}}", 1), Criterion("b [[water]]", 1)]))
    step1 = judge.stats.since(before)
    mid = judge.stats.copy()
    grade(judge, items_for(["water"], [Criterion("c [[water]]", 1)]))
    step2 = judge.stats.since(mid)
    assert (step1.calls, step1.failed, step1.failures["http_5xx"], step1.criteria, step1.batches) == (3, 1, 1, 2, 1)
    assert (step2.calls, step2.failed, dict(step2.failures)) == (1, 0, {})
    assert judge.stats.calls == 4 and judge.stats.batches == 2
    assert step1.prompt_tokens > 0 and step1.completion_tokens > 0 and step1.wall_s > 0
    m = step1.as_metrics()
    assert m["judge/failures/http_5xx"] == 1.0 and m["judge/failures/timeout"] == 0.0 and m["judge/calls"] == 3.0
    assert "failed 1 (http_5xx=1)" in judge.stats.summary()
    judge.stats.reset()
    assert judge.stats.calls == 0 and not judge.stats.failures
