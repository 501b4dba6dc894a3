"""Routing: rule criteria to the rule verifiers, everything else to the LLM judge."""

from __future__ import annotations

from typing import Any

from ruscarl_lib.judges.rules import RuleJudge, is_rule_criterion
from ruscarl_lib.judges.verdict import GradingItem, Judge, JudgeStats, ProgressFn, Verdict


class CompositeJudge(Judge):
    """One judge over a mixed rubric: exact rules where a criterion names one, LLM elsewhere."""

    def __init__(self, rules: RuleJudge, llm: Judge, stats: JudgeStats | None = None) -> None:
        super().__init__(stats if stats is not None else llm.stats)
        self.rules = rules
        self.llm = llm

    def fingerprint(self) -> dict[str, Any]:
        return {"judge": "composite", "llm": self.llm.fingerprint()}

    async def aclose(self) -> None:
        await self.llm.aclose()

    async def _grade_many(self, items: list[GradingItem], on_done: ProgressFn | None) -> list[list[Verdict]]:
        out: list[list[Verdict | None]] = [[None] * len(it.criteria) for it in items]
        llm_items: list[GradingItem] = []
        llm_where: list[tuple[int, list[int]]] = []
        for k, it in enumerate(items):
            rule_idx = [i for i, c in enumerate(it.criteria) if is_rule_criterion(c)]
            if rule_idx:
                verdicts = self.rules.grade_now(it.response, [it.criteria[i] for i in rule_idx])
                for i, v in zip(rule_idx, verdicts):
                    out[k][i] = v
                if on_done is not None:
                    on_done(len(rule_idx))
            rule_set = set(rule_idx)
            other = [i for i in range(len(it.criteria)) if i not in rule_set]
            if other:
                llm_items.append(GradingItem(it.conversation, it.response, [it.criteria[i] for i in other]))
                llm_where.append((k, other))
        if llm_items:
            graded = await self.llm._grade_many(llm_items, on_done)
            for (k, idx), verdicts in zip(llm_where, graded):
                for i, v in zip(idx, verdicts):
                    out[k][i] = v
        return [[v for v in vs if v is not None] for vs in out]
