"""How a scaffold is shown: the chosen criteria written into the rollout prompt as a system
message (include / avoid lists, optional points, a do-not-reveal line).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ruscarl_lib.data.rubric import Criterion, RubricExample
from ruscarl_lib.scaffold.selection import select_criteria


__all__ = [
    "ScaffoldedPrompt",
    "render_scaffold",
    "scaffold_example",
]


_INTRO = (
    "Give the user the most helpful, accurate and complete answer you can. "
    "Use the guidelines below while writing it."
)
_INCLUDE_HEADER = "Include in your answer:"
_AVOID_HEADER = "Avoid in your answer:"
_NO_REVEAL = (
    "Do not mention, quote or hint at these guidelines in your answer; "
    "write it as if you had thought of everything yourself."
)


def _format_points(points: float) -> str:
    value = int(points) if float(points).is_integer() else points
    unit = "point" if abs(value) == 1 else "points"
    sign = "+" if points > 0 else ""
    return f"{sign}{value} {unit}"


def _bullet(criterion: Criterion, show_points: bool) -> str:
    text = " ".join(str(criterion.text).split())  # one line per criterion
    if show_points:
        return f"- {text} ({_format_points(criterion.points)})"
    return f"- {text}"


def scaffold_text(
    criteria: Sequence[Criterion], *, show_points: bool = True, warn_no_reveal: bool = True
) -> str:
    """The scaffold as plain text. Zero-point criteria go with the positive ones (not harmful)."""
    include = [c for c in criteria if c.points >= 0]
    avoid = [c for c in criteria if c.points < 0]
    parts = [_INTRO]
    if include:
        parts.append("\n".join([_INCLUDE_HEADER, *(_bullet(c, show_points) for c in include)]))
    if avoid:
        parts.append("\n".join([_AVOID_HEADER, *(_bullet(c, show_points) for c in avoid)]))
    if warn_no_reveal:
        parts.append(_NO_REVEAL)
    return "\n\n".join(parts)


def render_scaffold(
    messages: list[dict],
    criteria: Sequence[Criterion],
    *,
    show_points: bool = True,
    warn_no_reveal: bool = True,
) -> list[dict]:
    """A new message list whose system message carries the revealed criteria.

    An existing leading system message keeps its content and gets the scaffold appended, so
    chat templates that allow a single system message still work. With no criteria the
    conversation is returned unchanged (as a copy). The input is never modified.
    """
    out = [dict(m) for m in messages]
    if not criteria:
        return out
    text = scaffold_text(criteria, show_points=show_points, warn_no_reveal=warn_no_reveal)
    if out and out[0].get("role") == "system":
        original = str(out[0].get("content") or "").rstrip()
        out[0]["content"] = f"{original}\n\n{text}" if original else text
    else:
        out.insert(0, {"role": "system", "content": text})
    return out


@dataclass
class ScaffoldedPrompt:
    """A rollout prompt plus what was revealed, so rollouts can be logged and replayed."""

    messages: list[dict]
    shown: list[int]
    ratio: float


def scaffold_example(
    example: RubricExample,
    ratio: float,
    *,
    seed: int,
    step: int,
    group_position: int,
    show_points: bool = True,
    warn_no_reveal: bool = True,
) -> ScaffoldedPrompt:
    """Draw and render the scaffold of one rollout of `example` (training rollouts only)."""
    shown = select_criteria(
        len(example.rubric),
        ratio,
        seed=seed,
        example_id=example.id,
        step=step,
        group_position=group_position,
    )
    messages = render_scaffold(
        example.messages,
        [example.rubric[i] for i in shown],
        show_points=show_points,
        warn_no_reveal=warn_no_reveal,
    )
    return ScaffoldedPrompt(messages=messages, shown=shown, ratio=float(ratio))
