"""Warm-start conversations: follow scaffold hints, otherwise answer generically.

Why: METHOD.md section 8 needs a starting policy that *can* produce rewarded content when a
scaffold tells it what to include, but does not know it on its own. The conversations here
teach exactly those two behaviours and nothing about the world's answers:

- the hints come from a *decoy* rubric whose advice and ruled-out remedies are assigned to the
  listed conditions at random, so copying hints is learnt but the world's condition -> advice
  mapping is not (its correlation with the question is zero);
- the questions use condition combinations of the training side of the split only;
- unhinted answers (and the parts of a hinted answer that no hint covers) are generic tips,
  sometimes with a common remedy, which is what "plausible but uninformed" looks like here.

Scaffolds are rendered with `scaffold.render_scaffold`, the same renderer the trainer uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..rubric import Criterion
from ..scaffold import render_scaffold
from .world import OFFTOPIC_TEXT, Condition, World, offtopic_criterion, rule_phrase

__all__ = ["SFTDataConfig", "decoy_rubric", "answer_text", "sft_conversations", "OPENINGS"]

OPENINGS: tuple[str, ...] = ("thanks for the details .", "sorry to hear that .", "here is what i suggest .")


@dataclass(frozen=True)
class SFTDataConfig:
    """How the warm-start conversations are drawn.

    unhinted_share: share of conversations with no scaffold at all.
    remedy_rate: chance that an answer suggests one common remedy (not one it was told to avoid).
      Its wording shares no words with the advice template ("you need to ..."), so penalising
      a remedy does not push probability towards the advice template by a shared prefix.
    points_shown_share: share of scaffolds rendered with point values (the trainer's default
      shows them; mixing both keeps the policy robust to `show_points`).
    warning_share: share of scaffolds rendered with the "do not reveal" warning.
    max_hinted_advice / max_hinted_avoid: most include / avoid bullets in one scaffold (the
      counts are drawn uniformly, so every size down to a single bullet is practised).
    """

    n_examples: int = 3000
    unhinted_share: float = 0.25
    max_hinted_advice: int = 4
    max_hinted_avoid: int = 3
    remedy_rate: float = 0.5
    points_shown_share: float = 0.75
    warning_share: float = 1.0
    seed: int = 0


def decoy_rubric(
    world: World, conditions: list[Condition], n_advice: int, n_avoid: int, rng: np.random.Generator
) -> list[Criterion]:
    """A rubric in the world's criterion format whose advice and remedies are drawn at random.

    Its size is independent of the question, so one conversation can carry several hints:
    more copy events per example make hint-following cheaper to learn. Avoid bullets are
    ruled-out remedies and, sometimes, the world's off-topic-advice criterion.
    """
    holder = conditions[0]
    include = rng.choice(len(world.conditions), n_advice, replace=False)
    remedies = rng.choice(len(world.remedies), min(n_avoid, len(world.remedies)), replace=False)

    def fake(advice: str, remedy: str) -> Condition:
        return Condition(holder.key, holder.statement, advice, remedy, int(rng.integers(2, 6)), -int(rng.integers(2, 6)))

    rubric = [fake(world.conditions[i].advice, holder.rules_out).advice_criterion() for i in include]
    rubric += [fake(holder.advice, world.remedies[i]).harm_criterion() for i in remedies]
    if world.config.offtopic_points and rng.random() < 0.5:
        others = [c.advice for i, c in enumerate(world.conditions) if i not in set(include.tolist())]
        rubric.append(offtopic_criterion(others, int(rng.integers(2, 6))))
    return rubric


def answer_text(
    world: World,
    shown: list[Criterion],
    rng: np.random.Generator,
    remedy_rate: float,
) -> str:
    """An answer that includes every shown advice, avoids shown remedies, and is generic otherwise."""
    include = [rule_phrase(c) for c in shown if c.points > 0]
    avoid = {rule_phrase(c) for c in shown if c.points < 0 and c.text != OFFTOPIC_TEXT}
    parts = [OPENINGS[int(rng.integers(len(OPENINGS)))]]
    parts += [f"you need to {a} ." for a in include]
    n_tips = int(rng.integers(1, 3))
    parts += [f"{world.generic_tips[i]} ." for i in rng.choice(len(world.generic_tips), n_tips, replace=False)]
    if rng.random() < remedy_rate:
        allowed = [r for r in world.remedies if not any(a in r for a in avoid)]
        if allowed:
            parts.append(f"a common remedy is {allowed[int(rng.integers(len(allowed)))]} .")
    parts.append(f"{world.closings[int(rng.integers(len(world.closings)))]} .")
    return " ".join(parts)


def sft_conversations(world: World, config: SFTDataConfig) -> list[dict[str, Any]]:
    """Prompt/completion rows for TRL's SFTTrainer (conversational format)."""
    rng = np.random.default_rng([config.seed, 7, world.config.seed])
    rows = []
    for _ in range(config.n_examples):
        conditions = world.draw_combo(rng, heldout=False)
        messages = [{"role": "user", "content": world.question(conditions, rng)}]
        shown: list[Criterion] = []
        if rng.random() >= config.unhinted_share:
            n_advice = int(rng.integers(0, min(config.max_hinted_advice, len(world.conditions)) + 1))
            n_avoid = int(rng.integers(0, config.max_hinted_avoid + 1))
            shown = decoy_rubric(world, conditions, n_advice, n_avoid, rng)  # may be empty
        prompt = render_scaffold(
            messages,
            shown,
            show_points=bool(rng.random() < config.points_shown_share),
            warn_no_reveal=bool(rng.random() < config.warning_share),
        )
        completion = answer_text(world, shown, rng, config.remedy_rate)
        rows.append({"prompt": prompt, "completion": [{"role": "assistant", "content": completion}]})
    return rows
