"""The rubric data model shared by every part of the suite.

A rubric is a checklist of weighted criteria attached to a conversation (METHOD.md section 2).
The same objects feed scaffolds (which criteria to show), judges (which criteria to check) and
scoring (how many points were earned), so they are small, plain and immutable where it helps.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable

MESSAGE_ROLES = ("system", "user", "assistant", "developer", "tool")


@dataclass(frozen=True)
class Criterion:
    """One rubric item: a statement about the response, worth `points` when it holds.

    Negative points mark undesirable behaviour: a met negative criterion costs points.
    Tags are normalised `key:value` strings (for example `axis:accuracy`).
    """

    text: str
    points: float
    tags: tuple[str, ...] = ()

    @property
    def is_positive(self) -> bool:
        return self.points > 0

    def tag_value(self, key: str) -> str | None:
        """Value of the first `key:value` tag with this key, or None."""
        return tag_value(self.tags, key)

    def to_dict(self) -> dict[str, Any]:
        return {"criterion": self.text, "points": self.points, "tags": list(self.tags)}


@dataclass
class RubricExample:
    """A conversation ending in a user turn, plus the rubric its answer is graded against.

    `extra` carries source fields we do not interpret (ideal completions, verl's
    `data_source`/`ability`, ...) so that writers can reproduce them.
    """

    id: str
    messages: list[dict[str, str]]
    rubric: list[Criterion]
    tags: list[str] = field(default_factory=list)
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def positive_points(self) -> float:
        """Denominator of the rubric score: the sum of all positive points."""
        return sum(c.points for c in self.rubric if c.points > 0)

    @property
    def n_turns(self) -> int:
        """Number of non-system messages in the conversation."""
        return sum(1 for m in self.messages if m["role"] != "system")

    def conversation_key(self) -> str:
        """A canonical string of the conversation, used to match examples across files."""
        return json.dumps(
            [{"role": m["role"], "content": m["content"].strip()} for m in self.messages],
            ensure_ascii=False,
            sort_keys=True,
        )

    def to_dict(self) -> dict[str, Any]:
        """The project's own JSONL record."""
        return {
            "id": self.id,
            "messages": [dict(m) for m in self.messages],
            "rubric": [c.to_dict() for c in self.rubric],
            "tags": list(self.tags),
            "source": self.source,
            "extra": self.extra,
        }


def tag_value(tags: Iterable[str], key: str) -> str | None:
    prefix = key + ":"
    for t in tags:
        if t.startswith(prefix):
            return t[len(prefix):]
    return None
