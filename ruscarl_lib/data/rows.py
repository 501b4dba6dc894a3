"""One raw record of any dataset layout -> a `RubricExample`, or an error naming the field.

HealthBench ships as JSONL, the paper's reference code feeds verl parquet files (whose tag
encoding changed over time), and this project keeps its own JSONL. Everything downstream works
on `RubricExample`, so the parsers here are the one place that knows the row layouts.

Tags are normalised `key:value` strings. A list keeps its order; a dict (`{axis, cluster,
level}`) has no order of its own and comes out in the canonical order level, cluster, axis,
then other keys alphabetically (the order HealthBench's own files use).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ruscarl_lib.data.rubric import MESSAGE_ROLES, Criterion, RubricExample
from ruscarl_lib.data.tags import TagFormatError, normalize_tags

FORMATS = ("healthbench_jsonl", "verl_parquet", "ruscarl_jsonl")


# Defaults of the verl layout. A loaded example records a value in `extra` only when it differs
# from these, so that writing and reloading gives back an identical example.
VERL_DEFAULT_ABILITY = "medical_chat"
VERL_DEFAULT_STYLE = "rubric"
VERL_DEFAULT_GROUND_TRUTH = ""
# Keys of `extra` that the verl writer maps onto verl's own fields.
VERL_EXTRA_KEYS = ("ability", "reward_model_style", "ground_truth", "extra_info", "columns")
# extra_info keys that may carry the example id, in order of preference.
_VERL_ID_KEYS = ("id", "prompt_id", "uid")
RUSCARL_EXTRA_FIELD = "ruscarl_extra"


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


class FieldError(Exception):
    """A problem in one field of a row: raised by the parsers, reported as a RowError by the readers."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


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
        raise FieldError(name, f"expected a list, got {type(value).__name__}")
    return value


def _parse_messages(raw: Any, name: str) -> list[dict[str, str]]:
    if raw is None:
        raise FieldError(name, "missing")
    items = _as_list(raw, name)
    if not items:
        raise FieldError(name, "empty conversation")
    messages: list[dict[str, str]] = []
    for i, m in enumerate(items):
        here = f"{name}[{i}]"
        if not isinstance(m, dict):
            raise FieldError(here, f"expected an object with role and content, got {m!r}")
        role, content = m.get("role"), m.get("content")
        if role not in MESSAGE_ROLES:
            raise FieldError(f"{here}.role", f"unknown role {role!r} (expected one of "
                              f"{', '.join(MESSAGE_ROLES)})")
        if not isinstance(content, str):
            raise FieldError(f"{here}.content", f"not a string ({content!r})")
        msg = {"role": str(role), "content": str(content)}
        # Other message keys (e.g. `name`) are kept; parquet fills absent ones with None.
        for k, v in m.items():
            if k not in ("role", "content") and v is not None:
                msg[str(k)] = _to_python(v)
        messages.append(msg)
    if messages[-1]["role"] != "user":
        raise FieldError(f"{name}[{len(messages) - 1}].role",
                          f"conversation must end with a user turn, ends with "
                          f"{messages[-1]['role']!r}")
    return messages


def _parse_points(value: Any, name: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        raise FieldError(name, f"not a number ({value!r})")
    number = value.item() if isinstance(value, np.generic) else value
    if not math.isfinite(number):
        raise FieldError(name, f"not a finite number ({value!r})")
    return number


def _parse_rubric(raw: Any, name: str) -> list[Criterion]:
    if raw is None:
        raise FieldError(name, "missing rubric")
    items = _as_list(raw, name)
    if not items:
        raise FieldError(name, "empty rubric")
    rubric = []
    for i, c in enumerate(items):
        here = f"{name}[{i}]"
        if not isinstance(c, dict):
            raise FieldError(here, f"expected an object with criterion and points, got {c!r}")
        text = c.get("criterion")
        if not isinstance(text, str) or not text.strip():
            raise FieldError(f"{here}.criterion", f"empty or missing criterion text ({text!r})")
        points = _parse_points(c.get("points"), f"{here}.points")
        try:
            tags = normalize_tags(c.get("tags"))
        except TagFormatError as err:
            raise FieldError(f"{here}.tags", str(err)) from None
        rubric.append(Criterion(text=text, points=points, tags=tags))
    if not any(c.points > 0 for c in rubric):
        raise FieldError(name, "no criterion has positive points (the score would divide by 0)")
    return rubric


def _parse_example_tags(raw: Any, name: str) -> list[str]:
    try:
        return list(normalize_tags(raw))
    except TagFormatError as err:
        raise FieldError(name, str(err)) from None


def _conversation_hash(messages: list[dict[str, str]]) -> str:
    key = json.dumps([[m["role"], m["content"].strip()] for m in messages], ensure_ascii=False)
    return "conv-" + hashlib.sha1(key.encode("utf-8")).hexdigest()[:16]


def _parse_id(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, np.integer)):
        raise FieldError(name, f"id must be a string or integer, got {value!r}")
    text = str(value)
    if not text.strip():
        raise FieldError(name, "empty id")
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


def parse_ruscarl(row: dict[str, Any]) -> tuple[RubricExample, str | None]:
    messages = _parse_messages(row.get("messages"), "messages")
    rubric = _parse_rubric(row.get("rubric"), "rubric")
    tags = _parse_example_tags(row.get("tags"), "tags")
    ex_id = _parse_id(row.get("id"), "id")
    source = row.get("source") or ""
    if not isinstance(source, str):
        raise FieldError("source", f"not a string ({source!r})")
    extra = row.get("extra") or {}
    if not isinstance(extra, dict):
        raise FieldError("extra", f"expected an object, got {type(extra).__name__}")
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
        raise FieldError("reward_model", "missing" if rm is None else
                          f"expected an object, got {type(rm).__name__}")
    rubric = _parse_rubric(rm.get("rubrics"), "reward_model.rubrics")
    info = row.get("extra_info")
    if info is None:
        info = {}
    if not isinstance(info, dict):
        raise FieldError("extra_info", f"expected an object, got {type(info).__name__}")

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
    packed = info.get(RUSCARL_EXTRA_FIELD)
    if packed is not None:
        try:
            unpacked = json.loads(packed)
        except (TypeError, json.JSONDecodeError) as err:
            raise FieldError(f"extra_info.{RUSCARL_EXTRA_FIELD}", f"not a JSON object ({err})")
        if not isinstance(unpacked, dict):
            raise FieldError(f"extra_info.{RUSCARL_EXTRA_FIELD}", "not a JSON object")
        extra.update(unpacked)
    known_info = {"prompt", "reward_model", "example_tags", RUSCARL_EXTRA_FIELD, id_field}
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


PARSERS = {
    "healthbench_jsonl": _parse_healthbench,
    "ruscarl_jsonl": parse_ruscarl,
    "verl_parquet": _parse_verl,
}
