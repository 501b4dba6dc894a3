"""Builders for synthetic dataset files in every supported layout (for the data tests).

The verl files are written with pyarrow/pandas directly, not with our writer, so that the
loader is tested against files shaped like the ones found in the wild.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ruscarl_lib.data.rubric import Criterion, RubricExample

AXES = ["accuracy", "completeness", "communication_quality", "context_awareness",
        "instruction_following"]


def healthbench_record(i: int) -> dict[str, Any]:
    """One synthetic record in the official HealthBench JSONL layout."""
    prompt = [{"role": "user", "content": f"Question {i}: is symptom {i} worrying?"}]
    if i % 3 == 0:  # some multi-turn conversations
        prompt = [
            {"role": "user", "content": f"Opening {i}"},
            {"role": "assistant", "content": f"Follow-up question {i}?"},
            {"role": "user", "content": f"Answer {i} with  two spaces"},
        ]
    rubrics = [
        {"criterion": f"Advises seeing a clinician about symptom {i}.", "points": 5 + i % 4,
         "tags": ["level:example", f"axis:{AXES[i % 5]}"]},
        {"criterion": f"Explains the usual course of symptom {i}.", "points": 3,
         "tags": ["level:cluster", f"cluster:hedging_case_{i % 2}", "axis:accuracy"]},
        {"criterion": f"Claims symptom {i} is always harmless.", "points": -6,
         "tags": ["level:example", "axis:accuracy"]},
    ]
    return {
        "prompt": prompt,
        "completion": None,
        "rubrics": rubrics,
        "example_tags": [f"theme:{['hedging', 'global_health', 'emergency_referrals'][i % 3]}",
                         "physician_agreed_category:enough-context"],
        "prompt_id": f"hb-{i:04d}",
        "ideal_completions_data": None if i % 2 else {
            "ideal_completion": f"Ideal answer {i}", "ideal_completions_group": "Group 1",
            "ideal_completions_ref_completions": [f"ref {i}a", f"ref {i}b"]},
        "canary": "synthetic-canary-string",
    }


def write_healthbench_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _tags_dict(tags: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {"axis": None, "cluster": None, "level": None}
    for t in tags:
        k, _, v = t.partition(":")
        out[k] = v
    return out


def verl_row(record: dict[str, Any], tag_style: str) -> dict[str, Any]:
    """A HealthBench record in the reference code's verl layout (no id, no example tags)."""
    if tag_style == "dict":
        rubrics = [{**c, "tags": _tags_dict(c["tags"])} for c in record["rubrics"]]
    elif tag_style == "numpy_str":  # how older files stored tags: str() of a numpy array
        rubrics = [{**c, "tags": str(np.array(c["tags"]))} for c in record["rubrics"]]
    else:
        raise ValueError(tag_style)
    reward_model = {"ground_truth": "", "rubrics": rubrics, "style": "rubric"}
    return {
        "prompt": record["prompt"],
        "data_source": "healthbench",
        "ability": "medical_chat",
        "reward_model": reward_model,
        "extra_info": {"prompt": record["prompt"], "reward_model": reward_model},
    }


def write_verl_dict_parquet(path: Path, records: list[dict[str, Any]]) -> Path:
    """verl parquet with dict tags, written with pyarrow like the HealthBench-500 file."""
    pq.write_table(pa.Table.from_pylist([verl_row(r, "dict") for r in records]), path)
    return path


def write_verl_numpy_str_parquet(path: Path, records: list[dict[str, Any]]) -> Path:
    """verl parquet with stringified numpy tag arrays, written through pandas."""
    pd.DataFrame([verl_row(r, "numpy_str") for r in records]).to_parquet(path)
    return path


def rich_examples() -> list[RubricExample]:
    """Examples exercising everything a round trip must keep."""
    return [
        RubricExample(
            id="ex-a",
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "First question"},
                {"role": "assistant", "content": "Clarifying question?"},
                {"role": "user", "content": "Details — with ünïcode and \"quotes\"\nnewline"},
            ],
            rubric=[
                Criterion("Says the key thing.", 7, ("level:example", "axis:accuracy")),
                Criterion("Half a point.", 0.5, ("level:cluster", "cluster:c1",
                                                 "axis:completeness")),
                Criterion("Does a bad thing.", -8.25, ("level:example", "axis:accuracy")),
                Criterion("Untagged.", 2, ()),
            ],
            tags=["theme:hedging", "theme:global_health"],
            source="unit",
            extra={"ideal_completions_data": None, "canary": "xyz",
                   "nested": {"a": [1, 2], "b": "c"}},
        ),
        RubricExample(
            id="ex-b",
            messages=[{"role": "user", "content": "Single turn"}],
            rubric=[Criterion("Only criterion.", 3, ("level:example", "axis:context_awareness")),
                    Criterion("Negative.", -2, ("level:example",
                                                "axis:communication_quality"))],
            tags=[],
            source="unit",
            extra={},
        ),
    ]
