"""Reading and writing rubric datasets in the formats met in the wild.

HealthBench ships as JSONL, the paper's reference code feeds verl parquet files (whose tag
encoding changed over time), and this project keeps its own JSONL. Everything downstream works
on `RubricExample`, so this module is the one place that knows the file layouts, checks every
row, and says exactly which file, row and field is wrong when a row is bad.

Conventions:
- Rows are counted from 0. In JSONL files a row is a physical line (blank lines are skipped but
  still counted), so row r is line r + 1.
- Tags are normalised `key:value` strings. A list keeps its order; a dict (`{axis, cluster,
  level}`) has no order of its own and comes out in the canonical order level, cluster, axis,
  then other keys alphabetically (the order HealthBench's own files use).
- `load(write(x)) == x` for both writers. The verl writer stores what verl has no column for
  (example id, example tags, unrecognised fields) inside `extra_info`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import math
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Sequence

import numpy as np

from .rubric import MESSAGE_ROLES, Criterion, RubricExample
from .tags import TagFormatError, normalize_tags, tags_to_dict
from .paths import resolve_path

log = logging.getLogger(__name__)

FORMATS = ("healthbench_jsonl", "verl_parquet", "ruscarl_jsonl")
DEFAULT_ENV_VAR = "RUSCARL_HEALTHBENCH"
SAMPLE_RESOURCE = "data/sample_medical.jsonl"

# Defaults of the verl layout. A loaded example records a value in `extra` only when it differs
# from these, so that writing and reloading gives back an identical example.
VERL_DEFAULT_ABILITY = "medical_chat"
VERL_DEFAULT_STYLE = "rubric"
VERL_DEFAULT_GROUND_TRUTH = ""
# Keys of `extra` that the verl writer maps onto verl's own fields.
_VERL_EXTRA_KEYS = ("ability", "reward_model_style", "ground_truth", "extra_info", "columns")
# extra_info keys that may carry the example id, in order of preference.
_VERL_ID_KEYS = ("id", "prompt_id", "uid")
_RUSCARL_EXTRA_FIELD = "ruscarl_extra"


# --------------------------------------------------------------------------------------------
# Errors and reports


@dataclass(frozen=True)
class RowError:
    """Where a row went wrong: file, 0-based row (None for whole-file problems), field, why."""

    file: str
    row: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = self.file if self.row is None else f"{self.file} row {self.row} (0-based)"
        return f"{where} field {self.field}: {self.message}"


class DataValidationError(ValueError):
    """A dataset row (or the whole file) does not fit the expected layout."""

    def __init__(self, error: RowError):
        super().__init__(str(error))
        self.error = error


@dataclass
class LoadResult:
    """Examples that loaded, and the rows that were skipped (only with strict=False)."""

    examples: list[RubricExample]
    skipped: list[RowError]
    path: str
    format: str

    def summary(self) -> str:
        text = f"{self.path}: {len(self.examples)} examples ({self.format})"
        if self.skipped:
            text += f", {len(self.skipped)} rows skipped; first: {self.skipped[0]}"
        return text


class _FieldError(Exception):
    """Internal: a problem in one field of the row being parsed."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


# --------------------------------------------------------------------------------------------
# Row parsing (shared by all layouts)


def _to_python(obj: Any) -> Any:
    """Plain Python containers and scalars from numpy/pandas values (arrays become lists)."""
    if isinstance(obj, np.ndarray):
        return [_to_python(x) for x in obj.tolist()]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {str(k): _to_python(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_python(x) for x in obj]
    return obj


def _as_list(value: Any, name: str) -> list[Any]:
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, list):
        raise _FieldError(name, f"expected a list, got {type(value).__name__}")
    return value


def _parse_messages(raw: Any, name: str) -> list[dict[str, str]]:
    if raw is None:
        raise _FieldError(name, "missing")
    items = _as_list(raw, name)
    if not items:
        raise _FieldError(name, "empty conversation")
    messages: list[dict[str, str]] = []
    for i, m in enumerate(items):
        here = f"{name}[{i}]"
        if not isinstance(m, dict):
            raise _FieldError(here, f"expected an object with role and content, got {m!r}")
        role, content = m.get("role"), m.get("content")
        if role not in MESSAGE_ROLES:
            raise _FieldError(f"{here}.role", f"unknown role {role!r} (expected one of "
                              f"{', '.join(MESSAGE_ROLES)})")
        if not isinstance(content, str):
            raise _FieldError(f"{here}.content", f"not a string ({content!r})")
        msg = {"role": str(role), "content": str(content)}
        # Other message keys (e.g. `name`) are kept; parquet fills absent ones with None.
        for k, v in m.items():
            if k not in ("role", "content") and v is not None:
                msg[str(k)] = _to_python(v)
        messages.append(msg)
    if messages[-1]["role"] != "user":
        raise _FieldError(f"{name}[{len(messages) - 1}].role",
                          f"conversation must end with a user turn, ends with "
                          f"{messages[-1]['role']!r}")
    return messages


def _parse_points(value: Any, name: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        raise _FieldError(name, f"not a number ({value!r})")
    number = value.item() if isinstance(value, np.generic) else value
    if not math.isfinite(number):
        raise _FieldError(name, f"not a finite number ({value!r})")
    return number


def _parse_rubric(raw: Any, name: str) -> list[Criterion]:
    if raw is None:
        raise _FieldError(name, "missing rubric")
    items = _as_list(raw, name)
    if not items:
        raise _FieldError(name, "empty rubric")
    rubric = []
    for i, c in enumerate(items):
        here = f"{name}[{i}]"
        if not isinstance(c, dict):
            raise _FieldError(here, f"expected an object with criterion and points, got {c!r}")
        text = c.get("criterion")
        if not isinstance(text, str) or not text.strip():
            raise _FieldError(f"{here}.criterion", f"empty or missing criterion text ({text!r})")
        points = _parse_points(c.get("points"), f"{here}.points")
        try:
            tags = normalize_tags(c.get("tags"))
        except TagFormatError as err:
            raise _FieldError(f"{here}.tags", str(err)) from None
        rubric.append(Criterion(text=text, points=points, tags=tags))
    if not any(c.points > 0 for c in rubric):
        raise _FieldError(name, "no criterion has positive points (the score would divide by 0)")
    return rubric


def _parse_example_tags(raw: Any, name: str) -> list[str]:
    try:
        return list(normalize_tags(raw))
    except TagFormatError as err:
        raise _FieldError(name, str(err)) from None


def _conversation_hash(messages: list[dict[str, str]]) -> str:
    key = json.dumps([[m["role"], m["content"].strip()] for m in messages], ensure_ascii=False)
    return "conv-" + hashlib.sha1(key.encode("utf-8")).hexdigest()[:16]


def _parse_id(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, np.integer)):
        raise _FieldError(name, f"id must be a string or integer, got {value!r}")
    text = str(value)
    if not text.strip():
        raise _FieldError(name, "empty id")
    return text


# Each parser turns one raw record into (example, name of the id field or None if derived).


def _parse_healthbench(row: dict[str, Any]) -> tuple[RubricExample, str | None]:
    messages = _parse_messages(row.get("prompt"), "prompt")
    rubric = _parse_rubric(row.get("rubrics"), "rubrics")
    tags = _parse_example_tags(row.get("example_tags"), "example_tags")
    ex_id = _parse_id(row.get("prompt_id"), "prompt_id")
    extra = {k: _to_python(v) for k, v in row.items()
             if k not in ("prompt", "rubrics", "example_tags", "prompt_id")}
    example = RubricExample(id=ex_id or _conversation_hash(messages), messages=messages,
                            rubric=rubric, tags=tags, source="healthbench", extra=extra)
    return example, "prompt_id" if ex_id else None


def _parse_ruscarl(row: dict[str, Any]) -> tuple[RubricExample, str | None]:
    messages = _parse_messages(row.get("messages"), "messages")
    rubric = _parse_rubric(row.get("rubric"), "rubric")
    tags = _parse_example_tags(row.get("tags"), "tags")
    ex_id = _parse_id(row.get("id"), "id")
    source = row.get("source") or ""
    if not isinstance(source, str):
        raise _FieldError("source", f"not a string ({source!r})")
    extra = row.get("extra") or {}
    if not isinstance(extra, dict):
        raise _FieldError("extra", f"expected an object, got {type(extra).__name__}")
    extra = _to_python(extra)
    for k, v in row.items():  # unknown top-level keys travel in extra
        if k not in ("id", "messages", "rubric", "tags", "source", "extra"):
            extra[k] = _to_python(v)
    example = RubricExample(id=ex_id or _conversation_hash(messages), messages=messages,
                            rubric=rubric, tags=tags, source=source, extra=extra)
    return example, "id" if ex_id else None


def _parse_verl(row: dict[str, Any]) -> tuple[RubricExample, str | None]:
    messages = _parse_messages(row.get("prompt"), "prompt")
    rm = row.get("reward_model")
    if not isinstance(rm, dict):
        raise _FieldError("reward_model", "missing" if rm is None else
                          f"expected an object, got {type(rm).__name__}")
    rubric = _parse_rubric(rm.get("rubrics"), "reward_model.rubrics")
    info = row.get("extra_info")
    if info is None:
        info = {}
    if not isinstance(info, dict):
        raise _FieldError("extra_info", f"expected an object, got {type(info).__name__}")

    ex_id, id_field = None, None
    for key in _VERL_ID_KEYS:
        ex_id = _parse_id(info.get(key), f"extra_info.{key}")
        if ex_id is not None:
            id_field = key
            break
    if "example_tags" in info and info["example_tags"] is not None:
        tags = _parse_example_tags(info["example_tags"], "extra_info.example_tags")
    else:
        tags = _parse_example_tags(row.get("example_tags"), "example_tags")

    extra: dict[str, Any] = {}
    ability = row.get("ability")
    if ability is not None and ability != VERL_DEFAULT_ABILITY:
        extra["ability"] = _to_python(ability)
    style = rm.get("style")
    if style is not None and style != VERL_DEFAULT_STYLE:
        extra["reward_model_style"] = _to_python(style)
    truth = rm.get("ground_truth")
    if truth is not None and truth != VERL_DEFAULT_GROUND_TRUTH:
        extra["ground_truth"] = _to_python(truth)
    packed = info.get(_RUSCARL_EXTRA_FIELD)
    if packed is not None:
        try:
            unpacked = json.loads(packed)
        except (TypeError, json.JSONDecodeError) as err:
            raise _FieldError(f"extra_info.{_RUSCARL_EXTRA_FIELD}", f"not a JSON object ({err})")
        if not isinstance(unpacked, dict):
            raise _FieldError(f"extra_info.{_RUSCARL_EXTRA_FIELD}", "not a JSON object")
        extra.update(unpacked)
    known_info = {"prompt", "reward_model", "example_tags", _RUSCARL_EXTRA_FIELD, id_field}
    other_info = {k: _to_python(v) for k, v in info.items()
                  if k not in known_info and v is not None}
    if other_info:
        extra["extra_info"] = other_info
    known_cols = {"prompt", "data_source", "ability", "reward_model", "extra_info",
                  "example_tags"}
    other_cols = {k: _to_python(v) for k, v in row.items()
                  if k not in known_cols and v is not None}
    if other_cols:
        extra["columns"] = other_cols
    source = row.get("data_source") or ""
    example = RubricExample(id=ex_id or _conversation_hash(messages), messages=messages,
                            rubric=rubric, tags=tags, source=str(source), extra=extra)
    return example, f"extra_info.{id_field}" if id_field else None


_PARSERS = {
    "healthbench_jsonl": _parse_healthbench,
    "ruscarl_jsonl": _parse_ruscarl,
    "verl_parquet": _parse_verl,
}


# --------------------------------------------------------------------------------------------
# Readers


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open("r", encoding="utf-8")


def _iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any] | _FieldError]]:
    with _open_text(path) as fh:
        for row, line in enumerate(fh):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                yield row, _FieldError("<line>", f"malformed JSON ({err.msg} at column "
                                                 f"{err.colno})")
                continue
            if not isinstance(record, dict):
                yield row, _FieldError("<line>", f"expected a JSON object, got "
                                                 f"{type(record).__name__}")
                continue
            yield row, record


def _read_parquet_rows(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as err:  # pyarrow raises several types for unreadable files
        raise DataValidationError(RowError(str(path), None, "<file>",
                                           f"cannot read as parquet ({err})")) from None


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() in (".parquet", ".pq")


def detect_format(path: str | Path) -> str:
    """The layout of a dataset file, from its extension and the fields of its first record."""
    path = Path(path)
    if _is_parquet(path):
        import pyarrow.parquet as pq

        try:
            names = set(pq.read_schema(path).names)
        except Exception as err:
            raise DataValidationError(RowError(str(path), None, "<file>",
                                               f"cannot read as parquet ({err})")) from None
        if {"prompt", "reward_model"} <= names:
            return "verl_parquet"
        raise DataValidationError(RowError(
            str(path), None, "<columns>",
            f"not a verl rubric file: expected columns prompt and reward_model, found "
            f"{sorted(names)}"))
    for row, record in _iter_jsonl(path):
        if isinstance(record, _FieldError):
            continue
        if "prompt" in record and "rubrics" in record:
            return "healthbench_jsonl"
        if "messages" in record and "rubric" in record:
            return "ruscarl_jsonl"
        raise DataValidationError(RowError(
            str(path), row, "<line>",
            f"cannot tell the format: expected HealthBench fields (prompt, rubrics) or "
            f"project fields (messages, rubric), found {sorted(record)}"))
    raise DataValidationError(RowError(str(path), None, "<file>",
                                       "no readable JSON records to detect the format from"))


def load_examples_with_report(
    path: str | Path,
    format: str = "auto",
    strict: bool = True,
    limit: int | None = None,
) -> LoadResult:
    """Load a dataset file and report skipped rows.

    `format`: "auto" (by extension and fields) or one of FORMATS. `strict=True` raises
    DataValidationError at the first bad row; `strict=False` skips bad rows and lists them in
    `LoadResult.skipped`. `limit` stops after that many good examples.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset file not found: {path}")
    fmt = detect_format(path) if format == "auto" else format
    if fmt not in _PARSERS:
        raise ValueError(f"unknown dataset format {format!r}; expected 'auto' or one of "
                         f"{', '.join(FORMATS)}")
    parse = _PARSERS[fmt]
    if fmt == "verl_parquet":
        rows: Iterable[tuple[int, Any]] = enumerate(_read_parquet_rows(path))
    else:
        rows = _iter_jsonl(path)

    examples: list[RubricExample] = []
    skipped: list[RowError] = []
    seen_ids: dict[str, int] = {}
    for row, record in rows:
        if limit is not None and len(examples) >= limit:
            break
        try:
            if isinstance(record, _FieldError):
                raise record
            example, id_field = parse(record)
            if example.id in seen_ids:
                if id_field is not None:
                    raise _FieldError(id_field, f"duplicate id {example.id!r} (first at row "
                                                f"{seen_ids[example.id]})")
                # Same conversation twice without ids: keep both, distinguish the ids.
                n = 2
                while f"{example.id}-{n}" in seen_ids:
                    n += 1
                example.id = f"{example.id}-{n}"
        except _FieldError as err:
            error = RowError(str(path), row, err.field, err.message)
            if strict:
                raise DataValidationError(error) from None
            skipped.append(error)
            continue
        seen_ids[example.id] = row
        examples.append(example)
    if skipped:
        log.warning("%s: skipped %d bad rows; first: %s", path, len(skipped), skipped[0])
    return LoadResult(examples=examples, skipped=skipped, path=str(path), format=fmt)


def load_examples(
    path: str | Path,
    format: str = "auto",
    strict: bool = True,
    limit: int | None = None,
) -> list[RubricExample]:
    """Load a dataset file as RubricExamples (see load_examples_with_report)."""
    return load_examples_with_report(path, format=format, strict=strict, limit=limit).examples


def load_sample_dataset(limit: int | None = None) -> list[RubricExample]:
    """The small medical-advice dataset shipped with the package (written for this project)."""
    resource = resources.files("ruscarl_lib").joinpath(SAMPLE_RESOURCE)
    with resources.as_file(resource) as path:
        return load_examples(path, format="ruscarl_jsonl", strict=True, limit=limit)


def resolve_data_path(path: str | Path | None, env_var: str | None = DEFAULT_ENV_VAR
                      ) -> Path | None:
    """The dataset file to use: an explicit path, else `$env_var`, else None (the sample).

    A path that is configured but does not exist is an error, never a silent fallback.
    """
    if path is not None and str(path).strip():
        resolved = resolve_path(path)
        if not resolved.exists():
            raise FileNotFoundError(f"configured dataset path does not exist: {resolved}")
        return resolved
    if env_var:
        value = os.environ.get(env_var, "").strip()
        if value:
            resolved = resolve_path(value)
            if not resolved.exists():
                raise FileNotFoundError(
                    f"dataset path from environment variable {env_var} does not exist: "
                    f"{resolved}")
            return resolved
    return None


def load_dataset_from_params(data_params: Any) -> list[RubricExample]:
    """Examples as configured by a `DataParams` section (path, env var, format, strict, limit)."""
    path = resolve_data_path(data_params.path, data_params.path_env)
    if path is None:
        log.info("no dataset configured; using the embedded sample dataset")
        return load_sample_dataset(limit=data_params.limit)
    result = load_examples_with_report(path, format=data_params.format,
                                       strict=data_params.strict, limit=data_params.limit)
    if result.skipped:
        log.warning(result.summary())
    return result.examples


# --------------------------------------------------------------------------------------------
# Writers


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
            _parse_ruscarl(ex.to_dict())
        except _FieldError as err:
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
    packed = {k: v for k, v in extra.items() if k not in _VERL_EXTRA_KEYS}
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
        _RUSCARL_EXTRA_FIELD: json.dumps(packed, ensure_ascii=False) if packed else None,
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
    core_info = ["prompt", "reward_model", "id", "example_tags", _RUSCARL_EXTRA_FIELD]
    info_types = {"prompt": message_list, "reward_model": reward_model, "id": pa.string(),
                  "example_tags": pa.list_(pa.string()), _RUSCARL_EXTRA_FIELD: pa.string()}
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
