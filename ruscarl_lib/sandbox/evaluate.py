"""Sample answers from a policy and grade them with the rules-only judge.

Why: every sandbox number (bottleneck report, before/after training) is "sample G answers per
task, grade each criterion by its rule, score with the rubric formula". Keeping that in one
place means the demo and the tests measure exactly the same thing. Grading always sees the
clean conversation; a scaffold only changes what the policy is prompted with.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ruscarl_lib.judges.rules import RuleJudge
from ruscarl_lib.data.rubric import RubricExample
from ruscarl_lib.scaffold.render import render_scaffold
from ruscarl_lib.judges.scoring import example_score
from ruscarl_lib.evaluate.generate import SamplingConfig, generate_hf

__all__ = ["SANDBOX_SAMPLING", "grade_response", "sample_and_grade"]

# The paper's truncated sampling (METHOD.md section 6); sandbox answers are a few dozen tokens.
SANDBOX_SAMPLING = SamplingConfig(max_new_tokens=48, temperature=0.7, top_p=0.8, top_k=20, batch_size=64)

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
    sampling: SamplingConfig = SANDBOX_SAMPLING,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per (example, sample): response, score, criteria met.

    `hinted=True` prompts with the full rubric as a scaffold (ratio 1), the strongest hint the
    trainer ever gives; otherwise the clean prompt, as in evaluation.
    """
    prompts = [
        render_scaffold(ex.messages, ex.rubric, show_points=show_points) if hinted else ex.messages
        for ex in examples
    ]
    was_training = model.training
    model.eval()
    try:
        answers = generate_hf(model, tokenizer, prompts, replace(sampling, n_samples=n), seed=seed)
    finally:
        model.train(was_training)
    rows = []
    for a in answers:
        ex = examples[a["prompt_pos"]]
        rows.append({"example_id": ex.id, "sample": a["sample_index"], "hinted": hinted, "response": a["response"],
                     **grade_response(ex, a["response"])})
    df = pd.DataFrame(rows)
    df["score"] = df["score"].astype(np.float64)
    return df
