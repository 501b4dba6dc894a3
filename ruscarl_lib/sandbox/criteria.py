"""The sandbox's criteria, all checked by rule verifiers (no judge model): the advice a condition
calls for, the remedy it rules out, tiered penalties for advice meant for conditions the user
never mentioned, and optional penalties for repeating advice and for stuttering.
"""

from __future__ import annotations

import json
import re
from typing import Sequence

from ruscarl_lib.data.rubric import Criterion

__all__ = [
    "rule_phrase",
    "rule_tags",
    "RULE_FUNCTION",
    "OFFTOPIC_TIERS",
    "is_offtopic",
    "repeat_criterion",
    "is_repeat",
    "stutter_criterion",
    "is_guard",
    "offtopic_criteria",
]


# Rule verifier used for every criterion: the built-in `contains` rule of judges/rules.py,
# case-insensitive. Positive criteria name the advice, negative ones the ruled-out remedy.
RULE_FUNCTION = "contains"


def rule_tags(phrase: str, *extra: str) -> tuple[str, ...]:
    """Tags that route a criterion to the rule verifier checking for `phrase`."""
    params = json.dumps({"text": phrase, "ignore_case": True})
    return ("verifier:rule", f"function:{RULE_FUNCTION}", f"parameters:{params}", *extra)


OFFTOPIC_CLUSTER = "cluster:sandbox_offtopic"
# (at least how many unmentioned conditions get advice, weight in units of `offtopic_points`)
OFFTOPIC_TIERS: tuple[tuple[int, int], ...] = ((1, 1), (2, 1), (3, 2))
_COUNT_WORDS = {1: "a condition", 2: "two or more conditions", 3: "three or more conditions"}


def offtopic_criteria(advice: Sequence[str], points: float) -> list[Criterion]:
    """Negative criteria against advice meant for conditions the user did not mention (`advice`).

    Tiered (one, two, three or more such pieces of advice), so the penalty grows with the
    number of wrong guesses: with one flat criterion, reciting every advice the policy knows
    would cost a single penalty and collect every positive criterion, a reward hack that
    generalises to any task without knowing which advice fits which condition. Their texts name
    no advice, so showing them in a scaffold gives nothing away.
    """
    out = []
    for at_least, weight in OFFTOPIC_TIERS:
        params = json.dumps({"text": list(advice), "at_least": at_least, "ignore_case": True})
        out.append(Criterion(
            text=f"The response gives advice meant for {_COUNT_WORDS[at_least]} the user did not mention.",
            points=-abs(float(points)) * weight,
            tags=("verifier:rule", f"function:{RULE_FUNCTION}", f"parameters:{params}",
                  "axis:context_awareness", OFFTOPIC_CLUSTER),
        ))
    return out


REPEAT_CLUSTER = "cluster:sandbox_repeat"


def repeat_criterion(advice: Sequence[str], points: float) -> Criterion:
    """A negative criterion met when any piece of advice occurs twice (a regex backreference)."""
    alternatives = "|".join(re.escape(a) for a in sorted(advice, key=len, reverse=True))
    params = json.dumps({"pattern": f"({alternatives}).*\\1", "flags": "is"})
    return Criterion(
        text="The response repeats a piece of advice it already gave.",
        points=-abs(float(points)),
        tags=("verifier:rule", "function:regex", f"parameters:{params}", "axis:communication_quality", REPEAT_CLUSTER),
    )


def is_repeat(criterion: Criterion) -> bool:
    return REPEAT_CLUSTER in criterion.tags


def is_offtopic(criterion: Criterion) -> bool:
    return OFFTOPIC_CLUSTER in criterion.tags


STUTTER_CLUSTER = "cluster:sandbox_stutter"
STUTTER_RUN = 3  # the same word this many times in a row; no answer of the warm start's kind does it


def stutter_criterion(points: float) -> Criterion:
    """A negative criterion met when one word comes `STUTTER_RUN` or more times in a row.

    Why: the `contains` verifiers check a phrase, not the sentence around it, so "for a fever:
    you you you you ... you need to rest" still meets the advice criterion. Runs that drifted
    into such stutters were rewarded for them until every answer hit the length cap.
    """
    params = json.dumps({"pattern": rf"\b(\w+)(?:\s+\1\b){{{STUTTER_RUN - 1},}}", "flags": "i"})
    return Criterion(
        text=f"The response says the same word {STUTTER_RUN} or more times in a row.",
        points=-abs(float(points)),
        tags=("verifier:rule", "function:regex", f"parameters:{params}", "axis:communication_quality", STUTTER_CLUSTER),
    )


def is_guard(criterion: Criterion) -> bool:
    """A criterion every rubric ends with (off-topic tiers, repeat, stutter), naming no remedy."""
    return is_offtopic(criterion) or is_repeat(criterion) or STUTTER_CLUSTER in criterion.tags


def rule_phrase(criterion: Criterion) -> str:
    """The phrase a sandbox criterion's rule looks for (inverse of `rule_tags`)."""
    raw = criterion.tag_value("parameters")
    if raw is None:
        raise ValueError(f"criterion {criterion.text!r} has no parameters: tag")
    value = json.loads(raw)
    text = value["text"] if isinstance(value, dict) else value
    if not isinstance(text, str):
        raise ValueError(f"criterion {criterion.text!r} checks several phrases")
    return text
