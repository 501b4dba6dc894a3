"""Writing rubric datasets: project JSONL and verl parquet, each round-tripping exactly.

`load(write(x)) == x` for both writers. The verl writer stores what verl has no column for
(example id, example tags, unrecognised fields) inside `extra_info`.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

from ruscarl_lib.data.rows import (
    RUSCARL_EXTRA_FIELD,
    VERL_DEFAULT_ABILITY,
    VERL_DEFAULT_GROUND_TRUTH,
    VERL_DEFAULT_STYLE,
    VERL_EXTRA_KEYS,
    DataValidationError,
    FieldError,
    RowError,
    parse_ruscarl,
)
from ruscarl_lib.data.rubric import RubricExample
from ruscarl_lib.data.tags import tags_to_dict


@contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path next to `path` that replaces it only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _check_writable(examples: Sequence[RubricExample], target: Path) -> None:
    """Refuse to write what the loader would reject, naming the example."""
    for i, ex in enumerate(examples):
        try:
            parse_ruscarl(ex.to_dict())
        except FieldError as err:
            raise DataValidationError(RowError(
                str(target), i, err.field, f"example {ex.id!r} is not valid: {err.message}"
            )) from None


def write_jsonl(examples: Sequence[RubricExample], path: str | Path) -> Path:
    """Write examples in the project's JSONL format (one RubricExample.to_dict per line)."""
    path = Path(path)
    examples = list(examples)
    _check_writable(examples, path)
    with _atomic_path(path) as tmp:
        with tmp.open("w", encoding="utf-8") as fh:
            for ex in examples:
                fh.write(json.dumps(ex.to_dict(), ensure_ascii=False) + "\n")
    return path


def _verl_row(ex: RubricExample, tag_style: str) -> dict[str, Any]:
    extra = dict(ex.extra)
    packed = {k: v for k, v in extra.items() if k not in VERL_EXTRA_KEYS}
    if tag_style == "dict":
        rubrics = [{"criterion": c.text, "points": c.points, "tags": tags_to_dict(c.tags)}
                   for c in ex.rubric]
    else:
        rubrics = [{"criterion": c.text, "points": c.points, "tags": list(c.tags)}
                   for c in ex.rubric]
    reward_model = {
        "ground_truth": extra.get("ground_truth", VERL_DEFAULT_GROUND_TRUTH),
        "rubrics": rubrics,
        "style": extra.get("reward_model_style", VERL_DEFAULT_STYLE),
    }
    messages = [dict(m) for m in ex.messages]
    info = dict(extra.get("extra_info") or {})
    info.update({
        "prompt": messages,
        "reward_model": reward_model,
        "id": ex.id,
        "example_tags": list(ex.tags),
        RUSCARL_EXTRA_FIELD: json.dumps(packed, ensure_ascii=False) if packed else None,
    })
    row = dict(extra.get("columns") or {})
    row.update({
        "prompt": messages,
        "data_source": ex.source,
        "ability": extra.get("ability", VERL_DEFAULT_ABILITY),
        "reward_model": reward_model,
        "extra_info": info,
    })
    return row


def _verl_schema(rows: list[dict[str, Any]], tag_style: str):
    """An explicit arrow schema for the verl layout; unknown extras get inferred types."""
    import pyarrow as pa

    def inferred(values: list[Any]) -> pa.DataType:
        return pa.array(values).type

    msg_keys = sorted({k for r in rows for m in r["prompt"] for k in m} - {"role", "content"})
    msg_fields = [pa.field("content", pa.string()), pa.field("role", pa.string())]
    msg_fields += [pa.field(k, inferred([m.get(k) for r in rows for m in r["prompt"]]))
                   for k in msg_keys]
    message_list = pa.list_(pa.struct(msg_fields))

    criteria = [c for r in rows for c in r["reward_model"]["rubrics"]]
    all_int = all(isinstance(c["points"], int) for c in criteria)
    points_type = pa.int64() if all_int else pa.float64()
    if tag_style == "dict":
        keys = {k for c in criteria for k in c["tags"]}
        ordered = ["axis", "cluster", "level"] + sorted(keys - {"axis", "cluster", "level"})
        tags_type = pa.struct([pa.field(k, pa.string()) for k in ordered])
    else:
        tags_type = pa.list_(pa.string())
    reward_model = pa.struct([
        pa.field("ground_truth", inferred([r["reward_model"]["ground_truth"] for r in rows])),
        pa.field("rubrics", pa.list_(pa.struct([
            pa.field("criterion", pa.string()),
            pa.field("points", points_type),
            pa.field("tags", tags_type),
        ]))),
        pa.field("style", pa.string()),
    ])
    core_info = ["prompt", "reward_model", "id", "example_tags", RUSCARL_EXTRA_FIELD]
    info_types = {"prompt": message_list, "reward_model": reward_model, "id": pa.string(),
                  "example_tags": pa.list_(pa.string()), RUSCARL_EXTRA_FIELD: pa.string()}
    other_info = sorted({k for r in rows for k in r["extra_info"]} - set(core_info))
    info_fields = [pa.field(k, info_types[k]) for k in core_info]
    info_fields += [pa.field(k, inferred([r["extra_info"].get(k) for r in rows]))
                    for k in other_info]
    core_cols = ["prompt", "data_source", "ability", "reward_model", "extra_info"]
    col_types = {"prompt": message_list, "data_source": pa.string(), "ability": pa.string(),
                 "reward_model": reward_model, "extra_info": pa.struct(info_fields)}
    other_cols = sorted({k for r in rows for k in r} - set(core_cols))
    fields = [pa.field(k, col_types[k]) for k in core_cols]
    fields += [pa.field(k, inferred([r.get(k) for r in rows])) for k in other_cols]
    return pa.schema(fields)


def write_verl_parquet(
    examples: Sequence[RubricExample],
    path: str | Path,
    tag_style: Literal["dict", "list"] = "dict",
) -> Path:
    """Write examples in the verl parquet layout of the reference code.

    `tag_style="dict"` stores criterion tags as `{axis, cluster, level, ...}` (newer files);
    criteria whose tags repeat a key need `tag_style="list"` (a list of `key:value` strings).
    The example id, example tags and fields verl has no place for go into `extra_info`.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if tag_style not in ("dict", "list"):
        raise ValueError(f"tag_style must be 'dict' or 'list', got {tag_style!r}")
    path = Path(path)
    examples = list(examples)
    if not examples:
        raise ValueError(f"{path}: refusing to write a parquet file with no examples")
    _check_writable(examples, path)
    rows = [_verl_row(ex, tag_style) for ex in examples]
    table = pa.Table.from_pylist(rows, schema=_verl_schema(rows, tag_style))
    with _atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path
