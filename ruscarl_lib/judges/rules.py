"""Rule verifiers: criteria checked by a program instead of a judge model.

A criterion is a rule criterion when it carries the tags `verifier:rule`, `function:<name>`
and optionally `parameters:<value>` (METHOD.md section 2). Rules are synchronous, exact and
free, so they are never cached or sent to an LLM.

Parameter format: the text after `parameters:` is parsed as JSON when it is valid JSON
(`parameters:{"text": "aspirin", "ignore_case": true}`, `parameters:["a", "b"]`,
`parameters:42`); otherwise it is taken as a plain string (`parameters:aspirin`). Each rule
below documents what it accepts.

A rule answers the criterion's statement literally: for a negative criterion such as
"Recommends antibiotics" (function `contains`), met=True means the response did it and costs
points, exactly as with an LLM judge. A rule that cannot run (unknown name, bad parameters,
missing optional package, an exception) gives a failed verdict with the reason; it is never
silently met or not met.

Add your own with the decorator:

    @register_rule("mentions_dose")
    def mentions_dose(response: str, params: Any) -> bool | tuple[bool, str]:
        ...
"""

from __future__ import annotations

import json
import re
import threading
import time
from typing import Any, Callable, Sequence, Union

from ruscarl_lib.data.rubric import Criterion
from ruscarl_lib.judges.verdict import GradingItem, Judge, ProgressFn, Verdict

RuleResult = Union[bool, tuple[bool, str]]
RuleFn = Callable[[str, Any], RuleResult]

_RULES: dict[str, RuleFn] = {}


class RuleParamsError(ValueError):
    """The `parameters:` value does not fit the rule."""


class RuleUnavailable(RuntimeError):
    """The rule needs an optional package that is not installed."""


def register_rule(name: str, *, overwrite: bool = False) -> Callable[[RuleFn], RuleFn]:
    """Decorator registering `fn(response, params) -> bool | (bool, explanation)` as `name`."""

    def deco(fn: RuleFn) -> RuleFn:
        if name in _RULES and not overwrite:
            raise ValueError(f"rule {name!r} is already registered (pass overwrite=True to replace it)")
        _RULES[name] = fn
        return fn

    return deco


def registered_rules() -> list[str]:
    return sorted(_RULES)


def is_rule_criterion(criterion: Criterion) -> bool:
    return criterion.tag_value("verifier") == "rule"


def parse_parameters(raw: str | None) -> Any:
    """JSON when the text is valid JSON, else the plain string; None when there is no tag."""
    if raw is None:
        return None
    text = raw.strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def check_rule(criterion: Criterion, response: str) -> Verdict:
    """Run the rule named by the criterion's tags on the response."""
    t0 = time.perf_counter()
    name = criterion.tag_value("function")

    def fail(kind: str, why: str) -> Verdict:
        return Verdict.failure(kind, why, source="rule", latency_s=time.perf_counter() - t0)

    if not name:
        return fail("unknown_rule", "criterion is tagged verifier:rule but has no function: tag")
    fn = _RULES.get(name.strip())
    if fn is None:
        return fail("unknown_rule", f"no rule named {name!r} (registered: {', '.join(registered_rules())})")
    params = parse_parameters(criterion.tag_value("parameters"))
    try:
        result = fn(response, params)
    except RuleParamsError as e:
        return fail("rule_params", f"rule {name!r}: {e}")
    except RuleUnavailable as e:
        return fail("rule_unavailable", f"rule {name!r}: {e}")
    except Exception as e:  # a user rule that raises must not take the batch down
        return fail("rule_error", f"rule {name!r} raised {type(e).__name__}: {e}")
    met, why = result if isinstance(result, tuple) else (result, "")
    if not isinstance(met, bool):
        return fail("rule_error", f"rule {name!r} returned {type(met).__name__}, expected bool")
    return Verdict(met=met, explanation=why or f"rule {name}", source="rule", latency_s=time.perf_counter() - t0)


# --------------------------------------------------------------------------------------------
# Built-in rules
# --------------------------------------------------------------------------------------------


def _texts_spec(params: Any) -> tuple[list[str], str, bool]:
    """(texts, "all"|"any", ignore_case) from a string, a list, or an object."""
    if isinstance(params, (int, float)) and not isinstance(params, bool):
        params = str(params)  # `parameters:42` reads as JSON 42, but means the text "42"
    if isinstance(params, str):
        return [params], "all", False
    if isinstance(params, list) and params and all(isinstance(t, str) for t in params):
        return params, "all", False
    if isinstance(params, dict):
        texts = params.get("text", params.get("texts"))
        if isinstance(texts, str):
            texts = [texts]
        match = params.get("match", "all")
        if not texts or not all(isinstance(t, str) for t in texts) or match not in ("all", "any"):
            raise RuleParamsError('expected {"text": str | [str], "match": "all"|"any", "ignore_case": bool}')
        return texts, match, bool(params.get("ignore_case", False))
    raise RuleParamsError(f"expected a string, a list of strings or an object, got {params!r}")


def _found(response: str, texts: list[str], ignore_case: bool) -> list[bool]:
    hay = response.casefold() if ignore_case else response
    return [(t.casefold() if ignore_case else t) in hay for t in texts]


@register_rule("contains")
def rule_contains(response: str, params: Any) -> RuleResult:
    """Met when the response contains the text(s). Parameters: `"aspirin"`, `["a", "b"]`
    (all must occur), `{"text": [...], "match": "any", "ignore_case": true}`, or
    `{"text": [...], "at_least": 2}` (met when at least that many of the texts occur)."""
    texts, match, ignore_case = _texts_spec(params)
    hits = _found(response, texts, ignore_case)
    at_least = params.get("at_least") if isinstance(params, dict) else None
    if at_least is not None:
        if not isinstance(at_least, int) or isinstance(at_least, bool) or at_least < 1:
            raise RuleParamsError('"at_least" must be a positive integer')
        return sum(hits) >= at_least, f"found {sum(hits)} of {len(texts)} texts (at least {at_least} needed)"
    met = all(hits) if match == "all" else any(hits)
    return met, f"found {sum(hits)}/{len(texts)} of the required texts"


@register_rule("not_contains")
def rule_not_contains(response: str, params: Any) -> RuleResult:
    """Met when the response contains none of the texts (same parameters as `contains`;
    with `"match": "all"` it is met unless every text occurs)."""
    texts, match, ignore_case = _texts_spec(params)
    hits = _found(response, texts, ignore_case)
    met = not any(hits) if match == "all" else not all(hits)
    return met, f"found {sum(hits)}/{len(texts)} of the forbidden texts"


_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE}


@register_rule("regex")
def rule_regex(response: str, params: Any) -> RuleResult:
    """Met when the pattern is found (re.search). Parameters: `"pattern"` or
    `{"pattern": "...", "flags": "im", "must_match": true}`; `must_match: false` inverts."""
    if isinstance(params, str):
        pattern, flags, must = params, "", True
    elif isinstance(params, dict) and isinstance(params.get("pattern"), str):
        pattern, flags, must = params["pattern"], str(params.get("flags", "")), bool(params.get("must_match", True))
    else:
        raise RuleParamsError('expected "pattern" or {"pattern": str, "flags": str, "must_match": bool}')
    bad = [f for f in flags if f not in _FLAGS]
    if bad:
        raise RuleParamsError(f"unknown regex flags {bad}; use any of {''.join(_FLAGS)}")
    try:
        rx = re.compile(pattern, sum((_FLAGS[f] for f in flags), 0))
    except re.error as e:
        raise RuleParamsError(f"invalid pattern: {e}") from None
    found = rx.search(response) is not None
    return found == must, f"pattern {'found' if found else 'not found'}"


_RANGE = re.compile(r"^\s*(\d+)?\s*-\s*(\d+)?\s*$")
_BOUND = re.compile(r"^\s*(<=|>=|<|>)\s*(\d+)\s*$")


@register_rule("word_count")
def rule_word_count(response: str, params: Any) -> RuleResult:
    """Met when the number of whitespace-separated words is within bounds (inclusive).
    Parameters: `{"min": 50, "max": 300}` (either optional), `"50-300"`, `"<=300"`, `">=50"`."""
    lo: int | None = None
    hi: int | None = None
    if isinstance(params, dict) and set(params) <= {"min", "max"} and params:
        lo, hi = params.get("min"), params.get("max")
        if not all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in (lo, hi)):
            raise RuleParamsError("min and max must be integers")
    elif isinstance(params, str) and (m := _RANGE.match(params)) and (m.group(1) or m.group(2)):
        lo = int(m.group(1)) if m.group(1) else None
        hi = int(m.group(2)) if m.group(2) else None
    elif isinstance(params, str) and (m := _BOUND.match(params)):
        op, v = m.group(1), int(m.group(2))
        lo, hi = {"<=": (None, v), "<": (None, v - 1), ">=": (v, None), ">": (v + 1, None)}[op]
    else:
        raise RuleParamsError('expected {"min": int, "max": int}, "LO-HI", "<=N" or ">=N"')
    n = len(response.split())
    met = (lo is None or n >= lo) and (hi is None or n <= hi)
    return met, f"{n} words (allowed {lo if lo is not None else 0}..{hi if hi is not None else 'inf'})"


@register_rule("math_answer")
def rule_math_answer(response: str, params: Any) -> RuleResult:
    """Met when the response's final answer equals the gold answer mathematically.

    Parameters: the gold answer, `"\\\\frac{1}{2}"` / `"0.5"`, or `{"answer": "..."}`. Uses the
    optional `math-verify` package (pip install math-verify); without it the verdict fails
    with kind `rule_unavailable` rather than guessing.
    """
    gold = params.get("answer") if isinstance(params, dict) else params
    if isinstance(gold, (int, float)) and not isinstance(gold, bool):
        gold = str(gold)
    if not isinstance(gold, str) or not gold.strip():
        raise RuleParamsError('expected the gold answer as a string or {"answer": str}')
    try:
        from math_verify import parse, verify
    except ImportError:
        raise RuleUnavailable("needs the optional package math-verify (pip install math-verify)") from None
    # math-verify's timeouts use SIGALRM, which only works on the main thread (TRL runs
    # async reward functions on a helper thread).
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    gold_text = gold if "$" in gold or "\\boxed" in gold else f"${gold}$"
    gold_parsed = parse(gold_text, parsing_timeout=timeout)
    pred = parse(response, parsing_timeout=timeout)
    if not gold_parsed:
        raise RuleParamsError(f"math-verify could not read the gold answer {gold!r}")
    if not pred:
        return False, "no answer found in the response"
    met = bool(verify(gold_parsed, pred, timeout_seconds=timeout))
    return met, f"answer {pred[-1]!s} {'matches' if met else 'does not match'} {gold}"


# --------------------------------------------------------------------------------------------
# Judge
# --------------------------------------------------------------------------------------------


class RuleJudge(Judge):
    """Grades rule criteria. Other criteria get a failed verdict of kind `no_judge` (use a
    CompositeJudge to send them to an LLM); they are reported, not dropped."""

    def fingerprint(self) -> dict[str, Any]:
        return {"judge": "rule"}

    def grade_now(self, response: str, criteria: Sequence[Criterion]) -> list[Verdict]:
        """Synchronous grading, for scripts and tests."""
        out = []
        for c in criteria:
            if is_rule_criterion(c):
                v = check_rule(c, response)
                self.stats.rule_verdicts += 1
            else:
                v = Verdict.failure("no_judge", "criterion needs an LLM judge; only rules are configured", source="rule")
            if v.failed:
                self.stats.record_failure(v.failure_kind or "rule_error")
            out.append(v)
        return out

    async def _grade_many(self, items: list[GradingItem], on_done: ProgressFn | None) -> list[list[Verdict]]:
        out = []
        for it in items:
            out.append(self.grade_now(it.response, it.criteria))
            if on_done is not None:
                on_done(len(it.criteria))
        return out


__all__ = [
    "RuleFn",
    "RuleJudge",
    "RuleParamsError",
    "RuleUnavailable",
    "check_rule",
    "is_rule_criterion",
    "parse_parameters",
    "register_rule",
    "registered_rules",
]
