"""Judges: who decides whether a response meets each rubric criterion (METHOD.md section 3).

`build_judge(params.judge)` gives the judge that params describe:
- kind `rule`: rule verifiers only (criteria without a rule get failed `no_judge` verdicts);
- kind `openai`: rule criteria to rule verifiers, all others to an OpenAI-compatible LLM
  judge, behind an on-disk verdict cache when `cache_path` is set.
All judges share one JudgeStats, available as `judge.stats`. The LLM judge (and with it the
`openai` client) loads only when asked for, so rule judging and training with rule rewards run
where openai is not installed (the forced-Unsloth lane).
"""

from __future__ import annotations

from ruscarl_lib.params import JudgeParams
from ruscarl_lib.judges.cache import CachedJudge, VerdictCache
from ruscarl_lib.judges.composite import CompositeJudge
from ruscarl_lib.judges.api_key import JudgeConfigError, resolve_api_key
from ruscarl_lib.judges.prompts import PROMPT_VERSION, build_messages, strip_think
from ruscarl_lib.judges.rules import RuleJudge, check_rule, is_rule_criterion, register_rule, registered_rules
from ruscarl_lib.judges.verdict import FAILURE_KINDS, GradingItem, Judge, JudgeStats, Verdict


def build_judge(params: JudgeParams, stats: JudgeStats | None = None) -> Judge:
    """The judge described by `params` (see module docstring)."""
    stats = stats if stats is not None else JudgeStats()
    rules = RuleJudge(stats)
    judge: Judge
    if params.kind == "rule":
        judge = rules
    else:
        from ruscarl_lib.judges.llm import OpenAIJudge

        llm: Judge = OpenAIJudge(params, stats)
        if params.cache_path:
            llm = CachedJudge(llm, VerdictCache(params.cache_path), stats)
        judge = CompositeJudge(rules, llm, stats)
    judge.params = params
    return judge


def __getattr__(name: str):
    if name == "OpenAIJudge":  # imported on first use: it needs the openai client
        from ruscarl_lib.judges.llm import OpenAIJudge

        return OpenAIJudge
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FAILURE_KINDS",
    "PROMPT_VERSION",
    "CachedJudge",
    "CompositeJudge",
    "GradingItem",
    "Judge",
    "JudgeConfigError",
    "JudgeStats",
    "OpenAIJudge",
    "RuleJudge",
    "Verdict",
    "VerdictCache",
    "build_judge",
    "build_messages",
    "check_rule",
    "is_rule_criterion",
    "register_rule",
    "registered_rules",
    "resolve_api_key",
    "strip_think",
]
