"""Sample answers from a policy and grade them with the rules-only judge.

Why: every sandbox number (bottleneck report, before/after training) is "sample G answers per
task, grade each criterion by its rule, score with the rubric formula". Keeping that in one
place means the demo and the tests measure exactly the same thing. Grading always sees the
clean conversation; a scaffold only changes what the policy is prompted with.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..judges.rules import RuleJudge
from ..rubric import RubricExample
from ..scaffold import render_scaffold
from ..scoring import example_score
from .policy import Sampling, generate

__all__ = ["grade_response", "sample_and_grade"]

_JUDGE = RuleJudge()


def grade_response(example: RubricExample, response: str) -> dict[str, Any]:
    """Rubric score of one response plus which positive/negative criteria it met."""
    verdicts = _JUDGE.grade_now(response, example.rubric)
    failed = [v for v in verdicts if v.failed]
    if failed:
        raise RuntimeError(f"rule grading failed for {example.id}: {failed[0].failure_kind} {failed[0].explanation}")
    met = [bool(v.met) for v in verdicts]
    points = [c.points for c in example.rubric]
    return {
        "score": example_score(points, met),
        "n_positive_met": sum(m for m, p in zip(met, points) if p > 0),
        "n_negative_met": sum(m for m, p in zip(met, points) if p < 0),
    }


def sample_and_grade(
    model: Any,
    tokenizer: Any,
    examples: Sequence[RubricExample],
    *,
    n: int = 8,
    hinted: bool = False,
    show_points: bool = True,
    sampling: Sampling = Sampling(),
    seed: int = 0,
    batch_size: int = 16,
) -> pd.DataFrame:
    """One row per (example, sample): response, score, criteria met.

    `hinted=True` prompts with the full rubric as a scaffold (ratio 1), the strongest hint the
    trainer ever gives; otherwise the clean prompt, as in evaluation.
    """
    prompts = [
        render_scaffold(ex.messages, ex.rubric, show_points=show_points) if hinted else ex.messages
        for ex in examples
    ]
    answers = generate(model, tokenizer, prompts, n=n, sampling=sampling, seed=seed, batch_size=batch_size)
    rows = []
    for ex, group in zip(examples, answers):
        for i, text in enumerate(group):
            rows.append({"example_id": ex.id, "sample": i, "hinted": hinted, "response": text, **grade_response(ex, text)})
    df = pd.DataFrame(rows)
    df["score"] = df["score"].astype(np.float64)
    return df
