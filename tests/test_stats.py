"""Dataset statistics tables."""

from __future__ import annotations

import pytest

from rubric_files import rich_examples
from ruscarl_lib.data.read import load_sample_dataset
from ruscarl_lib.data.stats import (
    per_criterion_table,
    per_example_table,
    summary,
    summary_table,
    tag_counts,
)


def test_per_example_table():
    df = per_example_table(rich_examples())
    a = df.set_index("id").loc["ex-a"]
    assert (a.n_criteria, a.n_positive, a.n_negative) == (4, 3, 1)
    assert a.positive_points == pytest.approx(9.5)
    assert a.negative_points == pytest.approx(-8.25)
    assert a.n_turns == 3 and bool(a.has_system)
    assert a.themes == "hedging,global_health"
    b = df.set_index("id").loc["ex-b"]
    assert (b.n_turns, b.themes, b.positive_points) == (1, "", 3.0)


def test_per_criterion_table():
    df = per_criterion_table(rich_examples())
    assert len(df) == 6
    row = df[(df.example_id == "ex-a") & (df["index"] == 1)].iloc[0]
    assert (row.points, row.polarity, row.axis, row.level, row.cluster) == (
        0.5, "positive", "completeness", "cluster", "c1")
    assert (row.n_chars, row.n_words) == (len("Half a point."), 3)
    untagged = df[(df.example_id == "ex-a") & (df["index"] == 3)].iloc[0]
    assert untagged.axis is None and untagged.level is None
    assert list(df.polarity).count("negative") == 2


def test_tag_counts():
    crit = tag_counts(rich_examples())
    counts = dict(zip(crit.tag, crit.n_criteria))
    assert counts == {"level:example": 4, "axis:accuracy": 2, "axis:completeness": 1,
                      "level:cluster": 1, "cluster:c1": 1, "axis:context_awareness": 1,
                      "axis:communication_quality": 1}
    assert crit.iloc[0].tag == "level:example"
    assert list(crit.columns) == ["tag", "key", "value", "n_criteria"]
    ex = tag_counts(rich_examples(), scope="examples")
    assert dict(zip(ex.tag, ex.n_examples)) == {"theme:hedging": 1, "theme:global_health": 1}
    assert set(ex.key) == {"theme"}
    with pytest.raises(ValueError):
        tag_counts(rich_examples(), scope="rows")


def test_summary():
    s = summary(rich_examples())
    assert s["n_examples"] == 2 and s["n_criteria"] == 6
    assert s["n_negative"] == 2 and s["share_negative"] == pytest.approx(2 / 6)
    assert s["mean_criteria_per_example"] == 3.0
    assert (s["min_criteria"], s["max_criteria"], s["n_multi_turn"]) == (2, 4, 1)
    table = summary_table(rich_examples())
    assert dict(zip(table.statistic, table.value))["n_criteria"] == 6
    assert summary([])["n_examples"] == 0


def test_sample_dataset_tables_agree():
    examples = load_sample_dataset()
    s = summary(examples)
    per_crit = per_criterion_table(examples)
    assert s["n_criteria"] == len(per_crit) == per_example_table(examples).n_criteria.sum()
    assert s["n_negative"] == (per_crit.polarity == "negative").sum() > 0
    axis_counts = tag_counts(examples)
    assert axis_counts[axis_counts.key == "axis"].n_criteria.sum() == len(per_crit)
