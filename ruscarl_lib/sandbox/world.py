"""A seeded synthetic rubric world: short triage questions graded by exact rules.

Why it exists: the exploration bottleneck (METHOD.md sections 1 and 8) needs tasks whose
rewarded content is *specific* (each condition calls for its own advice) while a generic answer
earns nothing, and whose grading is exact and free. Every task here lists a few patient
conditions, plus irrelevant distractor facts; each condition has one piece of advice that a
good answer gives (a positive criterion) and one common remedy it rules out (a negative
criterion), see `sandbox.criteria`.

The held-out split uses condition combinations that never occur in training, so a policy can
only score there by learning the condition -> advice mapping, not by memorising tasks. A third,
validation split uses combinations disjoint from both: hyperparameters are chosen on it, and
the held-out split is only reported.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ruscarl_lib.data.rubric import Criterion, RubricExample
from ruscarl_lib.sandbox.criteria import offtopic_criteria, repeat_criterion, stutter_criterion
from ruscarl_lib.sandbox.vocabulary import (
    CLOSINGS,
    CURATED_CONDITIONS,
    DISTRACTORS,
    GENERIC_TIPS,
    QUESTION_ENDINGS,
    REMEDIES,
    Condition,
    synthetic_conditions,
)

__all__ = [
    "World",
    "WorldConfig",
    "build_world",
]


@dataclass(frozen=True)
class WorldConfig:
    """Difficulty knobs of the world; every field enters the world's (and policy's) identity.

    n_conditions: vocabulary size (distinct conditions, each with its own advice).
    conditions_per_task: conditions listed in one question; each brings one advice criterion
      and, when `negatives` is on, one criterion against the remedy it rules out.
    offtopic_points: unit weight of the tiered negative criteria against advice meant for
      conditions the user did not mention (`OFFTOPIC_TIERS`: one, two, three or more such
      pieces of advice cost 1, 2 and 4 units in total); 0 leaves them out. At 5 per unit
      RuscaRL's policy learnt to write no advice at all; at 2 a wrong guess costs less than a
      right one earns, so it keeps exploring, while reciting every advice still scores below 0.
    repeat_points: size of the negative criterion against giving the same advice twice; 0
      (the default) leaves it out. Why it exists: without it, repeating a correct advice line
      until the length cap costs nothing, and RuscaRL runs on the 8-condition CI world ran
      away into exactly that (5 of 8 runs: over 65% of the last rollouts at the cap); with 3
      its validation score rose from 0.142 to 0.194 (2 seeds). Why it is off by default: the
      16-condition warm start, when hinted, repeats an advice in over half of its answers
      (its hinted score fell from 0.64 to 0.32 under the criterion, to 0.10 when also trained
      with it), and RuscaRL then learnt nothing (0.000 held-out, 2 runs).
    stutter_points: size of the negative criterion against saying one word three or more times
      in a row; 0 leaves it out. The advice verifiers match a phrase wherever it occurs, so a
      run that drifts into "you you you ... you need to rest" keeps its reward; on world seeds
      2 and 3 runs drifted that way until every answer hit the length cap. At 3 it removed
      those runaways (default kernels, 9 held-out runs on worlds 1-3, none ran away). Why it is
      off by default: under AVX2 kernels the default world still ran away in 2 of 4 runs with
      it (the stutter came once every answer was at the cap, where the truncation mask leaves
      no loss), against none without it (docs/robustness.md, "What the runaways are").
    n_distractors: irrelevant facts mixed into each question.
    heldout_share: share of condition combinations reserved for the held-out split.
    validation_share: share reserved for the validation split (tuning), disjoint from both
      training and held-out combinations.
    """

    n_conditions: int = 16
    conditions_per_task: int = 2
    negatives: bool = True
    offtopic_points: int = 2
    repeat_points: int = 0
    stutter_points: int = 0
    n_distractors: int = 1
    n_train: int = 256
    n_heldout: int = 64
    heldout_share: float = 0.25
    n_validation: int = 32
    validation_share: float = 0.15
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_conditions < 2:
            raise ValueError("n_conditions must be >= 2")
        if not 1 <= self.conditions_per_task < self.n_conditions:
            raise ValueError("conditions_per_task must lie in [1, n_conditions)")
        if self.offtopic_points < 0:
            raise ValueError("offtopic_points must be >= 0 (it is the size of a penalty)")
        if self.repeat_points < 0:
            raise ValueError("repeat_points must be >= 0 (it is the size of a penalty)")
        if self.stutter_points < 0:
            raise ValueError("stutter_points must be >= 0 (it is the size of a penalty)")
        if not 0 <= self.n_distractors <= len(DISTRACTORS):
            raise ValueError(f"n_distractors must lie in [0, {len(DISTRACTORS)}]")
        if not 0.0 < self.heldout_share < 1.0:
            raise ValueError("heldout_share must lie in (0, 1)")
        if not 0.0 < self.validation_share < 1.0 - self.heldout_share:
            raise ValueError("validation_share must lie in (0, 1 - heldout_share)")
        if self.n_train < 1 or self.n_heldout < 1 or self.n_validation < 1:
            raise ValueError("n_train, n_heldout and n_validation must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def digest(self) -> str:
        return hashlib.blake2b(json.dumps(self.to_dict(), sort_keys=True).encode(), digest_size=6).hexdigest()


def _make_conditions(config: WorldConfig) -> list[Condition]:
    rng = np.random.default_rng([config.seed, 1])
    raw = list(CURATED_CONDITIONS)
    if config.n_conditions > len(raw):
        raw += synthetic_conditions(config.n_conditions - len(raw), rng, {r[0] for r in raw})
    picked = [raw[i] for i in sorted(rng.permutation(len(raw))[: config.n_conditions])]
    return [
        Condition(key, lead, name, advice, remedy, int(rng.integers(2, 6)), -int(rng.integers(2, 6)))
        for key, lead, name, advice, remedy in picked
    ]


@dataclass
class World:
    """The conditions, the pools of generic content and the two task splits."""

    config: WorldConfig
    conditions: list[Condition]
    train: list[RubricExample] = field(default_factory=list)
    heldout: list[RubricExample] = field(default_factory=list)
    validation: list[RubricExample] = field(default_factory=list)

    remedies: tuple[str, ...] = REMEDIES
    generic_tips: tuple[str, ...] = GENERIC_TIPS
    closings: tuple[str, ...] = CLOSINGS
    distractors: tuple[str, ...] = DISTRACTORS
    question_endings: tuple[str, ...] = QUESTION_ENDINGS

    # -- splits --------------------------------------------------------------------------------

    def combo_split(self, keys: tuple[str, ...] | list[str]) -> str:
        """Which split (`train`, `validation` or `heldout`) a combination of conditions belongs to.

        Decided by a digest of the sorted keys, so membership needs no enumeration of all
        combinations and does not depend on which tasks happened to be drawn. The held-out
        side is the same one a world without a validation split would have.
        """
        key = "\x1f".join([str(self.config.seed), *sorted(keys)])
        u = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") / 2**64
        if u < self.config.heldout_share:
            return "heldout"
        if u < self.config.heldout_share + self.config.validation_share:
            return "validation"
        return "train"

    def is_heldout_combo(self, keys: tuple[str, ...] | list[str]) -> bool:
        return self.combo_split(keys) == "heldout"

    def split(self, name: str) -> list[RubricExample]:
        splits = {"train": self.train, "validation": self.validation, "heldout": self.heldout}
        if name not in splits:
            raise ValueError(f"unknown split {name!r}; known: {sorted(splits)}")
        return splits[name]

    def combos(self, split: str) -> list[tuple[str, ...]]:
        """Distinct condition combinations (sorted keys) used by the tasks of a split."""
        return sorted({tuple(sorted(ex.extra["conditions"])) for ex in self.split(split)})

    def condition(self, key: str) -> Condition:
        return self._by_key[key]

    def __post_init__(self) -> None:
        self._by_key = {c.key: c for c in self.conditions}

    # -- tasks ---------------------------------------------------------------------------------

    def question(self, conditions: list[Condition], rng: np.random.Generator) -> str:
        """A user turn stating the conditions, in the given order, with distractor facts mixed in."""
        picks = rng.choice(len(self.distractors), size=self.config.n_distractors, replace=False)
        n = len(conditions) + len(picks)
        slots = set(rng.choice(n, size=len(conditions), replace=False).tolist())
        stated, spare = iter(c.statement for c in conditions), iter(self.distractors[i] for i in picks)
        facts = [next(stated) if i in slots else next(spare) for i in range(n)]
        age = int(rng.integers(18, 80))
        ending = self.question_endings[int(rng.integers(len(self.question_endings)))]
        return f"i am {age} . " + " . ".join(facts) + f" . {ending}"

    def rubric(self, conditions: list[Condition]) -> list[Criterion]:
        """Advice criteria (one per condition), then harm criteria (one per ruled-out remedy, if
        `negatives`), then (if `offtopic_points`) the tiered criteria against off-topic advice."""
        rubric = [c.advice_criterion() for c in conditions]
        if self.config.negatives:
            seen: set[str] = set()
            for c in conditions:
                if c.rules_out not in seen:
                    seen.add(c.rules_out)
                    rubric.append(c.harm_criterion())
        present = {c.key for c in conditions}
        return rubric + self.guard_criteria([c.advice for c in self.conditions if c.key not in present])

    def guard_criteria(self, offtopic_advice: list[str]) -> list[Criterion]:
        """The criteria every rubric ends with, as configured: against giving `offtopic_advice`
        (tiered by `offtopic_points`), against repeating advice (`repeat_points`) and against
        stuttering (`stutter_points`)."""
        guards = []
        if self.config.offtopic_points:
            guards += offtopic_criteria(offtopic_advice, self.config.offtopic_points)
        if self.config.repeat_points:
            guards.append(repeat_criterion([c.advice for c in self.conditions], self.config.repeat_points))
        if self.config.stutter_points:
            guards.append(stutter_criterion(self.config.stutter_points))
        return guards

    def make_task(self, conditions: list[Condition], rng: np.random.Generator, task_id: str, split: str) -> RubricExample:
        """A task about `conditions`; the rubric lists them in the order the user mentions them."""
        conditions = [conditions[i] for i in rng.permutation(len(conditions))]
        return RubricExample(
            id=task_id,
            messages=[{"role": "user", "content": self.question(conditions, rng)}],
            rubric=self.rubric(conditions),
            tags=["theme:sandbox_triage"],
            source="ruscarl_sandbox",
            extra={"conditions": [c.key for c in conditions], "split": split},
        )

    def draw_combo(self, rng: np.random.Generator, split: str) -> list[Condition]:
        """A random combination of conditions from the requested split."""
        k = self.config.conditions_per_task
        for _ in range(10_000):
            idx = rng.choice(len(self.conditions), size=k, replace=False)
            picked = [self.conditions[i] for i in idx]
            if self.combo_split([c.key for c in picked]) == split:
                return picked
        raise RuntimeError(f"could not draw a {split} combination; change heldout_share / validation_share")

    def draw_training_conditions(self, rng: np.random.Generator, k: int) -> list[Condition]:
        """`k` distinct conditions, in random order, none of whose `conditions_per_task`-sized
        subsets is a held-out combination (so warm-start questions never show one)."""
        per_task = self.config.conditions_per_task
        if k == per_task:
            picked = self.draw_combo(rng, "train")
            return [picked[i] for i in rng.permutation(len(picked))]
        for _ in range(10_000):
            idx = rng.choice(len(self.conditions), size=k, replace=False)
            picked = [self.conditions[i] for i in idx]
            subsets = itertools.combinations([c.key for c in picked], per_task) if k > per_task else ()
            if all(self.combo_split(s) == "train" for s in subsets):
                return picked
        raise RuntimeError(f"could not draw {k} conditions free of held-out combinations")

    # -- text pools ----------------------------------------------------------------------------

    def texts(self) -> list[str]:
        """Every piece of world text (for building a vocabulary that covers the world)."""
        out: list[str] = []
        for c in self.conditions:
            out += [c.statement, c.name, c.advice, c.rules_out, c.advice_criterion().text, c.harm_criterion().text]
        out += [*self.remedies, *self.generic_tips, *self.closings, *self.distractors, *self.question_endings]
        out += [f"i am {age}" for age in range(18, 80)]
        return out

    def phrases(self) -> list[str]:
        """The fixed phrases the world's texts are assembled from, including the "<name>:"
        headings that rubric criteria and answers use to say which condition they address."""
        out = [c.name for c in self.conditions] + [f"{c.name}:" for c in self.conditions]
        out += [c.advice for c in self.conditions]
        out += [*self.remedies, *self.generic_tips, *self.closings, *self.distractors, *self.question_endings]
        return out

    def check_separation(self) -> None:
        """Generic content must never contain rewarded advice, or the world would leak reward."""
        generic = " | ".join([*self.generic_tips, *self.closings, *self.distractors]).lower()
        for c in self.conditions:
            if c.advice.lower() in generic:
                raise ValueError(f"advice {c.advice!r} occurs in generic content")


def build_world(config: WorldConfig | None = None, **overrides: Any) -> World:
    """Generate the world of `config` (or of the defaults with `overrides`); fully seeded."""
    if config is None:
        config = WorldConfig(**overrides)
    elif overrides:
        config = WorldConfig(**{**config.to_dict(), **overrides})
    world = World(config=config, conditions=_make_conditions(config))
    world.check_separation()
    _check_split_coverage(world)
    rng_train = np.random.default_rng([config.seed, 2])
    rng_held = np.random.default_rng([config.seed, 3])
    rng_val = np.random.default_rng([config.seed, 4])
    world.train = [
        world.make_task(world.draw_combo(rng_train, "train"), rng_train, f"sandbox-train-{i:05d}", "train")
        for i in range(config.n_train)
    ]
    world.heldout = [
        world.make_task(world.draw_combo(rng_held, "heldout"), rng_held, f"sandbox-heldout-{i:05d}", "heldout")
        for i in range(config.n_heldout)
    ]
    world.validation = [
        world.make_task(world.draw_combo(rng_val, "validation"), rng_val, f"sandbox-validation-{i:05d}", "validation")
        for i in range(config.n_validation)
    ]
    return world


def _check_split_coverage(world: World) -> None:
    """Both splits must be possible, and every condition must occur in some training combo."""
    k = world.config.conditions_per_task
    keys = [c.key for c in world.conditions]
    n_total = 1
    for i in range(k):
        n_total = n_total * (len(keys) - i) // (i + 1)
    if n_total > 200_000:
        return  # too many to enumerate; with this many combinations both sides are populated
    combos = list(itertools.combinations(keys, k))
    sides = [world.combo_split(c) for c in combos]
    empty = sorted({"train", "validation", "heldout"} - set(sides))
    if empty:
        raise ValueError(f"heldout_share / validation_share leave the {empty} split(s) without "
                         "combinations; change the seed or the shares")
    covered = {key for c, side in zip(combos, sides) if side == "train" for key in c}
    missing = sorted(set(keys) - covered)
    if missing:
        raise ValueError(f"conditions {missing} occur only in held-out combinations")
