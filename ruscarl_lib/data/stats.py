"""Dataset statistics as DataFrames, for the data notebook and for sanity checks.

How many criteria an example has, how many are negative and which axes they cover drive both
the scaffold (how many criteria a ratio shows) and the score's denominator, so these tables are
what one looks at before training on a new dataset.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Literal, Sequence

import pandas as pd

from ruscarl_lib.data.rubric import RubricExample, tag_value


def _polarity(points: float) -> str:
    return "positive" if points > 0 else "negative" if points < 0 else "zero"


def _themes(tags: Sequence[str]) -> str:
    return ",".join(t.split(":", 1)[1] for t in tags if t.startswith("theme:"))


def per_example_table(examples: Sequence[RubricExample]) -> pd.DataFrame:
    """One row per example. `negative_points` is the (negative) sum of the negative points."""
    rows = []
    for ex in examples:
        pos = [c.points for c in ex.rubric if c.points > 0]
        neg = [c.points for c in ex.rubric if c.points < 0]
        rows.append({
            "id": ex.id,
            "n_criteria": len(ex.rubric),
            "n_positive": len(pos),
            "n_negative": len(neg),
            "positive_points": float(sum(pos)),
            "negative_points": float(sum(neg)),
            "n_turns": ex.n_turns,
            "has_system": any(m["role"] == "system" for m in ex.messages),
            "themes": _themes(ex.tags),
        })
    columns = ["id", "n_criteria", "n_positive", "n_negative", "positive_points",
               "negative_points", "n_turns", "has_system", "themes"]
    return pd.DataFrame(rows, columns=columns)


def per_criterion_table(examples: Sequence[RubricExample]) -> pd.DataFrame:
    """One row per criterion, with its polarity, length and axis/level/cluster tags."""
    rows = []
    for ex in examples:
        for i, c in enumerate(ex.rubric):
            rows.append({
                "example_id": ex.id,
                "index": i,
                "points": c.points,
                "polarity": _polarity(c.points),
                "n_chars": len(c.text),
                "n_words": len(c.text.split()),
                "axis": tag_value(c.tags, "axis"),
                "level": tag_value(c.tags, "level"),
                "cluster": tag_value(c.tags, "cluster"),
                "criterion": c.text,
            })
    columns = ["example_id", "index", "points", "polarity", "n_chars", "n_words", "axis",
               "level", "cluster", "criterion"]
    return pd.DataFrame(rows, columns=columns)


def tag_counts(
    examples: Sequence[RubricExample],
    scope: Literal["criteria", "examples"] = "criteria",
) -> pd.DataFrame:
    """How often each tag occurs: on criteria (`n_criteria`) or as example tags (`n_examples`).

    Sorted by count (descending), then tag.
    """
    if scope == "criteria":
        counts = Counter(t for ex in examples for c in ex.rubric for t in set(c.tags))
        count_col = "n_criteria"
    elif scope == "examples":
        counts = Counter(t for ex in examples for t in set(ex.tags))
        count_col = "n_examples"
    else:
        raise ValueError(f"scope must be 'criteria' or 'examples', got {scope!r}")
    rows = [{"tag": t, "key": t.split(":", 1)[0], "value": t.split(":", 1)[1], count_col: n}
            for t, n in counts.items()]
    df = pd.DataFrame(rows, columns=["tag", "key", "value", count_col])
    return df.sort_values([count_col, "tag"], ascending=[False, True], ignore_index=True)


def summary(examples: Sequence[RubricExample]) -> dict[str, Any]:
    """Headline numbers of a dataset (plain Python values, easy to print or log)."""
    per_ex = per_example_table(examples)
    n_criteria = int(per_ex["n_criteria"].sum())
    n_negative = int(per_ex["n_negative"].sum())
    empty = len(per_ex) == 0
    return {
        "n_examples": len(per_ex),
        "n_criteria": n_criteria,
        "n_positive": int(per_ex["n_positive"].sum()),
        "n_negative": n_negative,
        "share_negative": n_negative / n_criteria if n_criteria else 0.0,
        "mean_criteria_per_example": 0.0 if empty else float(per_ex["n_criteria"].mean()),
        "min_criteria": 0 if empty else int(per_ex["n_criteria"].min()),
        "max_criteria": 0 if empty else int(per_ex["n_criteria"].max()),
        "n_multi_turn": int((per_ex["n_turns"] > 1).sum()),
        "mean_positive_points": 0.0 if empty else float(per_ex["positive_points"].mean()),
    }


def summary_table(examples: Sequence[RubricExample]) -> pd.DataFrame:
    """`summary` as a two-column DataFrame (statistic, value), for notebook display."""
    return pd.DataFrame(list(summary(examples).items()), columns=["statistic", "value"])
