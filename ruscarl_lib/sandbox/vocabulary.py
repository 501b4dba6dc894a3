"""The words a sandbox world is made of: conditions with their advice and ruled-out remedies,
synthetic conditions for larger worlds, and the uninformed content an answer may contain.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ruscarl_lib.data.rubric import Criterion
from ruscarl_lib.sandbox.criteria import rule_tags

__all__ = [
    "Condition",
]


# Common remedies an uninformed answer may suggest; each condition rules one of them out.
REMEDIES: tuple[str, ...] = (
    "ibuprofen",
    "aspirin",
    "a decongestant spray",
    "an antihistamine",
    "a hot bath",
    "a glass of wine",
    "intense exercise",
    "an ice pack",
    "skipping meals",
    "a long drive",
    "strong coffee",
    "a sauna",
)

# (key, how the user introduces it, its name, the advice it calls for, the remedy it rules out).
# The user says "<lead> <name>"; a good answer gives the advice, and must not suggest the remedy.
CURATED_CONDITIONS: tuple[tuple[str, str, str, str, str], ...] = (
    ("ulcer", "i have", "a stomach ulcer", "eat small bland meals", "ibuprofen"),
    ("asthma", "i have", "asthma", "keep your inhaler nearby", "aspirin"),
    ("hypertension", "i have", "high blood pressure", "measure your blood pressure", "a decongestant spray"),
    ("pregnancy", "i am", "pregnant", "call your midwife", "ibuprofen"),
    ("diabetes", "i have", "diabetes", "check your blood sugar", "skipping meals"),
    ("anticoagulant", "i take", "blood thinners", "watch for unusual bruising", "aspirin"),
    ("sprain", "i have", "a sprained ankle", "raise the ankle", "intense exercise"),
    ("migraine", "i get", "migraines", "rest in a dark room", "a long drive"),
    ("insomnia", "i have", "insomnia", "keep a regular bedtime", "strong coffee"),
    ("heartburn", "i get", "heartburn", "raise the head of your bed", "a glass of wine"),
    ("burn", "i have", "a burned hand", "cool it under running water", "an ice pack"),
    ("kidney", "i have", "kidney disease", "ask your pharmacist first", "ibuprofen"),
    ("glaucoma", "i have", "glaucoma", "book an eye check", "an antihistamine"),
    ("dizziness", "i have", "dizzy spells", "stand up slowly", "a long drive"),
    ("nosebleed", "i have", "a nosebleed", "pinch the soft nose", "aspirin"),
    ("gout", "i have", "gout", "limit red meat", "a glass of wine"),
    ("panic", "i get", "panic attacks", "breathe out slowly", "strong coffee"),
    ("sunburn", "i have", "sunburn", "apply aloe gel", "a hot bath"),
    ("constipation", "i am", "constipated", "eat more fibre", "skipping meals"),
    ("epilepsy", "i have", "epilepsy", "take your seizure medicine", "a glass of wine"),
    ("fever", "i have", "a fever", "log your temperature", "a sauna"),
    ("heart", "i have", "heart failure", "weigh yourself daily", "a sauna"),
    ("eczema", "i have", "eczema", "use a plain moisturiser", "a hot bath"),
    ("prostate", "i have", "an enlarged prostate", "empty your bladder twice", "an antihistamine"),
    ("concussion", "i have", "a head injury", "have someone stay with you", "intense exercise"),
    ("vomiting", "i keep", "vomiting", "sip rehydration salts", "strong coffee"),
    ("hayfever", "i have", "hay fever", "keep windows closed", "a decongestant spray"),
    ("frostnip", "i have", "frostnip", "warm them gradually", "a sauna"),
)

# Uninformed but plausible content; none of it is ever rewarded.
GENERIC_TIPS: tuple[str, ...] = (
    "rest as much as you can",
    "drink plenty of water",
    "keep an eye on how you feel",
    "try to stay calm",
    "get some fresh air",
    "eat a balanced diet",
    "get enough sleep",
    "take things easy for a few days",
)
CLOSINGS: tuple[str, ...] = (
    "see a doctor if things get worse",
    "call for help if you feel very unwell",
    "talk to a doctor if it does not settle",
)
DISTRACTORS: tuple[str, ...] = (
    "i work from home",
    "i have two cats",
    "i am training for a marathon",
    "i live alone",
    "i just moved house",
    "i drink tea every morning",
    "i am a teacher",
    "i travel a lot for work",
    "i have a small garden",
    "i play the piano",
    "i started a new job",
    "i am a vegetarian",
)
QUESTION_ENDINGS: tuple[str, ...] = (
    "what should i do ?",
    "any advice ?",
    "what do you suggest ?",
    "how should i look after myself ?",
)

_SYLLABLES = ("ka", "lo", "mir", "ten", "sa", "vu", "dor", "pel", "ri", "zan", "no", "bex")
_SYNTH_VERBS = ("take", "use", "apply", "start", "try")
_SYNTH_NOUNS = ("drops", "tablets", "cream", "tea", "rinse", "patches")


@dataclass(frozen=True)
class Condition:
    """One patient condition and what it implies for a good answer."""

    key: str
    lead: str  # "i have", "i am", ...
    name: str  # "diabetes", "a stomach ulcer", ...
    advice: str
    rules_out: str
    advice_points: int
    harm_points: int  # negative

    @property
    def statement(self) -> str:
        """How the user mentions it: "i have diabetes"."""
        return f"{self.lead} {self.name}"

    def advice_criterion(self) -> Criterion:
        return Criterion(
            text=f"The response gives this advice for {self.name}: {self.advice}.",
            points=float(self.advice_points),
            tags=rule_tags(self.advice, "axis:completeness", f"cluster:sandbox_{self.key}"),
        )

    def harm_criterion(self) -> Criterion:
        return Criterion(
            text=f"The response suggests {self.rules_out}.",
            points=float(self.harm_points),
            tags=rule_tags(_remedy_phrase(self.rules_out), "axis:accuracy", f"cluster:sandbox_{self.key}"),
        )


def _remedy_phrase(remedy: str) -> str:
    """The words that identify a remedy in a response (its article dropped)."""
    words = remedy.split()
    return " ".join(words[1:]) if words[0] in ("a", "an") else remedy


def synthetic_conditions(n: int, rng: np.random.Generator, taken: set[str]) -> list[tuple[str, str, str, str, str]]:
    """Made-up conditions for vocabularies larger than the curated list."""
    out = []
    while len(out) < n:
        name = "".join(rng.choice(_SYLLABLES, size=2)) + "itis"
        drug = "".join(rng.choice(_SYLLABLES, size=2)) + "ol"
        if name in taken or drug in taken:
            continue
        taken.update((name, drug))
        advice = f"{rng.choice(_SYNTH_VERBS)} {drug} {rng.choice(_SYNTH_NOUNS)}"
        out.append((name, "i have", name, advice, str(rng.choice(REMEDIES))))
    return out
