"""Warm-start conversations: follow scaffold hints, otherwise answer generically.

Why: METHOD.md section 8 needs a starting policy that *can* produce rewarded content when a
scaffold tells it what to include, but does not know it on its own. The conversations here
teach exactly those two behaviours and nothing about the world's answers:

- the hints come from a *decoy* rubric whose advice and ruled-out remedies are assigned to the
  listed conditions at random, so copying hints is learnt but the world's condition -> advice
  mapping is not (its correlation with the question is at chance level);
- the questions use condition combinations of the training side of the split only;
- an answer has one line per condition the user lists, headed by its name in the user's order
  ("for diabetes: ..."); the first lines carry "you need to <advice>" for every advice a shown
  criterion names (in random order), the rest a generic tip. Unhinted answers are therefore
  plausible, attentive to the question, and uninformed.

Why hinted advice fills the first lines rather than the line of its own condition: putting
each advice on its condition's line makes following a hint a look-up by condition name, which
a two-layer model only learns once an induction circuit forms; in a five-epoch SFT that
happened in one warm start out of five (seed 0 did; seed 1, a wider model, 10 epochs and 1-4
conditions per question did not). Copying "the next shown advice" needs no such circuit and
was learnt by both policy seeds tried (seed 0: hinted held-out score 0.64-0.70). The headings still
matter for RL: under the clean prompt, "for diabetes:" followed by its advice is a pattern
reward can reinforce directly, so RuscaRL learns the mapping within a few hundred steps.

Scaffolds are rendered with `scaffold.render_scaffold`, the same renderer the trainer uses, and
the shown criteria are drawn like the trainer draws them (a uniform share of the rubric).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ruscarl_lib.data.rubric import Criterion
from ruscarl_lib.scaffold.render import render_scaffold
from ruscarl_lib.sandbox.vocabulary import Condition
from ruscarl_lib.sandbox.world import World
from ruscarl_lib.sandbox.criteria import is_guard, rule_phrase

__all__ = ["SFTDataConfig", "decoy_rubric", "answer_text", "sft_conversations", "OPENINGS"]

OPENINGS: tuple[str, ...] = ("thanks for the details .", "sorry to hear that .", "here is what i suggest .")


@dataclass(frozen=True)
class SFTDataConfig:
    """How the warm-start conversations are drawn.

    unhinted_share: share of conversations with no scaffold at all (on top of scaffolds whose
      drawn share of the rubric rounds to zero criteria).
    remedy_rate: chance that an answer suggests one common remedy (not one it was told to
      avoid). Its wording ("a common remedy is ...") shares no words with the advice wording,
      so penalising a remedy does not move probability towards advice through a shared prefix.
    points_shown_share / warning_share: share of scaffolds rendered with point values / with the
      "do not reveal" warning (the trainer's defaults show both; mixing keeps the policy robust).
    min_conditions / max_conditions: how many conditions one warm-start question lists (drawn
      uniformly; 0 means the world's `conditions_per_task`). More conditions per question mean
      more hint-copy events per example, which is what makes copying learnable in a short SFT.
      No question contains a held-out combination (see `World.draw_training_conditions`).
    """

    n_examples: int = 8000
    unhinted_share: float = 0.2
    remedy_rate: float = 0.5
    points_shown_share: float = 0.75
    warning_share: float = 0.75
    min_conditions: int = 0
    max_conditions: int = 0
    seed: int = 0


def decoy_rubric(world: World, conditions: list[Condition], rng: np.random.Generator) -> list[Criterion]:
    """A rubric laid out like the world's for these conditions, with advice and remedies drawn
    at random instead of the world's own."""
    advice = rng.choice(len(world.conditions), len(conditions), replace=False)
    remedies = rng.choice(len(world.remedies), len(conditions), replace=False)
    decoys = [
        Condition(
            c.key, c.lead, c.name, world.conditions[a].advice, world.remedies[r],
            int(rng.integers(2, 6)), -int(rng.integers(2, 6)),
        )
        for c, a, r in zip(conditions, advice, remedies)
    ]
    rubric = [d.advice_criterion() for d in decoys]
    if world.config.negatives:
        rubric += [d.harm_criterion() for d in decoys]
    used = {d.advice for d in decoys}
    return rubric + world.guard_criteria([c.advice for c in world.conditions if c.advice not in used])


def answer_text(
    world: World,
    conditions: list[Condition],
    shown: list[Criterion],
    rng: np.random.Generator,
    remedy_rate: float,
) -> str:
    """The answer a hint-follower without world knowledge gives: every shown advice, generic
    tips for the remaining conditions, never a remedy a shown criterion rules out."""
    hinted = {c.tag_value("cluster"): rule_phrase(c) for c in shown if c.points > 0}
    avoid = {rule_phrase(c) for c in shown if c.points < 0 and not is_guard(c)}
    parts = [OPENINGS[int(rng.integers(len(OPENINGS)))]]
    tips = rng.permutation(len(world.generic_tips))
    given = [hinted[k] for k in rng.permutation(sorted(hinted))]
    for i, cond in enumerate(conditions):
        line = f"you need to {given[i]}" if i < len(given) else f"{world.generic_tips[tips[i % len(tips)]]}"
        parts.append(f"for {cond.name}: {line} .")
    parts += [f"you need to {a} ." for a in given[len(conditions):]]
    if rng.random() < remedy_rate:
        allowed = [r for r in world.remedies if not any(a in r for a in avoid)]
        if allowed:
            parts.append(f"a common remedy is {allowed[int(rng.integers(len(allowed)))]} .")
    parts.append(f"{world.closings[int(rng.integers(len(world.closings)))]} .")
    return " ".join(parts)


def sft_conversations(world: World, config: SFTDataConfig) -> list[dict[str, Any]]:
    """Prompt/completion rows for TRL's SFTTrainer (conversational format)."""
    rng = np.random.default_rng([config.seed, 7, world.config.seed])
    per_task = world.config.conditions_per_task
    low, high = config.min_conditions or per_task, config.max_conditions or per_task
    if not 1 <= low <= high <= len(world.conditions):
        raise ValueError(f"SFT conditions per question must satisfy 1 <= min <= max <= {len(world.conditions)}")
    rows = []
    for _ in range(config.n_examples):
        conditions = world.draw_training_conditions(rng, int(rng.integers(low, high + 1)))
        messages = [{"role": "user", "content": world.question(conditions, rng)}]
        rubric = decoy_rubric(world, conditions, rng)
        shown: list[Criterion] = []
        if rng.random() >= config.unhinted_share:
            k = int(round(len(rubric) * rng.random()))
            shown = [rubric[i] for i in sorted(rng.permutation(len(rubric))[:k])]
        prompt = render_scaffold(
            messages,
            shown,
            show_points=bool(rng.random() < config.points_shown_share),
            warn_no_reveal=bool(rng.random() < config.warning_share),
        )
        completion = answer_text(world, conditions, shown, rng, config.remedy_rate)
        rows.append({"prompt": prompt, "completion": [{"role": "assistant", "content": completion}]})
    return rows
