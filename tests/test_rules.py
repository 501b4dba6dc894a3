"""Rule verifiers, the rule registry, and routing between rules and the LLM judge."""

from __future__ import annotations

import asyncio
import importlib.util
import sys

import pytest

from judge_server import JudgeServer
from ruscarl_lib.judges import RuleJudge, build_judge, check_rule, register_rule, registered_rules
from ruscarl_lib.judges.rules import parse_parameters
from ruscarl_lib.params import JudgeParams
from ruscarl_lib.data.rubric import Criterion
from ruscarl_lib.judges.scoring import example_score

pytestmark = pytest.mark.timeout(60)


def rule(function: str, parameters: str | None = None, points: float = 1, text: str = "rule criterion") -> Criterion:
    tags = ["verifier:rule", f"function:{function}"]
    if parameters is not None:
        tags.append(f"parameters:{parameters}")
    return Criterion(text, points, tuple(tags))


def met(criterion: Criterion, response: str) -> bool | None:
    v = check_rule(criterion, response)
    assert v.source == "rule"
    return v.met


def test_parameters_are_json_or_plain_text():
    assert parse_parameters('{"min": 3}') == {"min": 3}
    assert parse_parameters('["a", "b"]') == ["a", "b"]
    assert parse_parameters("see a doctor") == "see a doctor"
    assert parse_parameters(None) is None


def test_contains_and_not_contains():
    r = "Please see a Doctor and drink water."
    assert met(rule("contains", "Doctor"), r) is True
    assert met(rule("contains", "doctor"), r) is False  # exact by default
    assert met(rule("contains", '{"text": "doctor", "ignore_case": true}'), r) is True
    assert met(rule("contains", '["water", "Doctor"]'), r) is True
    assert met(rule("contains", '["water", "aspirin"]'), r) is False
    assert met(rule("contains", '{"text": ["water", "aspirin"], "match": "any"}'), r) is True
    assert met(rule("not_contains", "aspirin"), r) is True
    assert met(rule("not_contains", "water"), r) is False
    assert met(rule("not_contains", '{"text": ["DOCTOR"], "ignore_case": true}'), r) is False
    assert met(rule("contains", "42"), "the answer is 42") is True  # JSON number read back as text


def test_regex_and_word_count():
    r = "Take 400 mg every 6 hours.\nStop if it hurts."
    assert met(rule("regex", r"\d+\s*mg"), r) is True
    assert met(rule("regex", '{"pattern": "^stop", "flags": "im"}'), r) is True
    assert met(rule("regex", '{"pattern": "^stop", "flags": "m"}'), r) is False
    assert met(rule("regex", '{"pattern": "surgery", "must_match": false}'), r) is True
    assert met(rule("word_count", '{"min": 5, "max": 10}'), r) is True
    assert met(rule("word_count", "1-5"), r) is False
    assert met(rule("word_count", "<=10"), r) is True
    assert met(rule("word_count", ">10"), r) is False
    assert met(rule("word_count", '{"min": 11}'), r) is False


@pytest.mark.parametrize(
    "criterion,kind",
    [
        (rule("no_such_rule", "x"), "unknown_rule"),
        (Criterion("tagged but nameless", 1, ("verifier:rule",)), "unknown_rule"),
        (rule("regex", "("), "rule_params"),
        (rule("regex", '{"pattern": "a", "flags": "q"}'), "rule_params"),
        (rule("word_count", "lots"), "rule_params"),
        (rule("contains", '{"match": "any"}'), "rule_params"),
    ],
)
def test_broken_rules_fail_with_a_reason(criterion, kind):
    v = check_rule(criterion, "some response")
    assert v.failed and v.met is None and v.failure_kind == kind and v.explanation


def test_registry_accepts_user_rules():
    @register_rule("test_starts_with")
    def starts_with(response, params):
        return response.startswith(params), f"starts with {params!r}?"

    @register_rule("test_raises")
    def raises(response, params):
        raise RuntimeError("boom")

    assert "test_starts_with" in registered_rules()
    v = check_rule(rule("test_starts_with", "Hello"), "Hello there")
    assert v.met is True and "starts with" in v.explanation
    v = check_rule(rule("test_raises"), "x")
    assert v.failed and v.failure_kind == "rule_error" and "boom" in v.explanation
    with pytest.raises(ValueError):
        register_rule("contains")(starts_with)


@pytest.mark.skipif(importlib.util.find_spec("math_verify") is None, reason="math-verify not installed")
def test_math_answer_with_math_verify():
    assert met(rule("math_answer", "\\frac{1}{2}"), "So the result is $\\boxed{0.5}$.") is True
    assert met(rule("math_answer", "0.5"), "The answer is \\boxed{\\frac{1}{2}}") is True
    assert met(rule("math_answer", '{"answer": "3"}'), "The answer is $4$.") is False
    assert met(rule("math_answer", "3"), "I do not know.") is False


def test_math_answer_reports_missing_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "math_verify", None)  # import now raises ImportError
    v = check_rule(rule("math_answer", "3"), "The answer is 3")
    assert v.failed and v.failure_kind == "rule_unavailable" and "math-verify" in v.explanation


def test_negative_rule_criterion_costs_points():
    crits = [Criterion("helpful", 2, ("verifier:rule", "function:contains", "parameters:rest")),
             Criterion("Recommends antibiotics", -1, ("verifier:rule", "function:contains", "parameters:antibiotics"))]
    verdicts = RuleJudge().grade_now("Get rest and take antibiotics.", crits)
    assert [v.met for v in verdicts] == [True, True]
    assert example_score([c.points for c in crits], [v.met for v in verdicts]) == pytest.approx(0.5)


def test_rule_judge_reports_criteria_it_cannot_grade():
    judge = build_judge(JudgeParams(kind="rule"))
    verdicts = asyncio.run(judge.grade([{"role": "user", "content": "q"}], "rest",
                                       [rule("contains", "rest"), Criterion("Is empathetic", 3)]))
    assert verdicts[0].met is True
    assert verdicts[1].failed and verdicts[1].failure_kind == "no_judge"
    assert judge.stats.rule_verdicts == 1 and judge.stats.failures["no_judge"] == 1


def test_composite_sends_only_non_rule_criteria_to_the_llm():
    with JudgeServer() as srv:
        judge = build_judge(JudgeParams(kind="openai", base_urls=[srv.base_url], cache_path=None))
        crits = [rule("contains", "water", 5), Criterion("Mentions [[rest]]", 3),
                 rule("not_contains", "surgery", 2), Criterion("Mentions [[sleep]]", 1)]
        verdicts = asyncio.run(judge.grade([{"role": "user", "content": "q"}], "water and rest", crits))
        assert [v.met for v in verdicts] == [True, True, True, False]
        assert [v.source for v in verdicts] == ["rule", "judge", "rule", "judge"]
        assert srv.requests == 2
        assert all("water and rest" in b["messages"][-1]["content"] for b in srv.bodies)


def test_contains_at_least_counts_distinct_texts():
    from ruscarl_lib.judges.rules import RuleParamsError, rule_contains

    params = {"text": ["red", "green", "blue"], "at_least": 2, "ignore_case": True}
    assert rule_contains("RED and green", params)[0] is True
    assert rule_contains("red, red and red", params)[0] is False  # one text, however often
    assert rule_contains("nothing", {**params, "at_least": 1})[0] is False
    with pytest.raises(RuleParamsError):
        rule_contains("red", {**params, "at_least": 0})
