"""Tags: the `key:value` strings criteria and examples carry, read from any stored form.

Why one module: tags arrive as lists, numpy arrays, numpy's string form of an array, JSON
strings and dicts (verl parquet files changed encoding over time; other converters write
`cluster: ""`), and every reader (data files, reward columns, verdict tables) must turn them
into the same tuple. A dict has no order of its own, so it comes out in the canonical order
level, cluster, axis, then other keys alphabetically (the order HealthBench's files use).
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any, Sequence

import numpy as np

__all__ = ["TagFormatError", "normalize_tags", "tags_to_dict"]

_DICT_TAG_ORDER = {"level": 0, "cluster": 1, "axis": 2}


class TagFormatError(ValueError):
    """A tag collection could not be read as `key:value` strings."""



_PY_STRING = re.compile(r"""'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*\"""", re.S)
_NP_REPR = re.compile(r"^array\((.*?)(?:,\s*dtype=[^)]*)?\)$", re.S)


def _parse_list_string(text: str) -> list[Any]:
    """Items of a stringified list: JSON (`["a", "b"]`) or numpy's str form (`['a' 'b']`)."""
    s = text.strip()
    m = _NP_REPR.match(s)
    if m:
        s = m.group(1).strip()
    if not (s.startswith("[") and s.endswith("]")):
        raise TagFormatError(f"not a list: {text!r}")
    try:
        value = json.loads(s)
    except json.JSONDecodeError:
        pass
    else:
        if isinstance(value, list):
            return value
    inner = s[1:-1]
    items: list[Any] = []
    pos = 0
    for lit in _PY_STRING.finditer(inner):
        if inner[pos:lit.start()].strip(" \t\r\n,"):
            raise TagFormatError(f"cannot read tag list {text!r}")
        items.append(ast.literal_eval(lit.group()))
        pos = lit.end()
    if inner[pos:].strip(" \t\r\n,"):
        raise TagFormatError(f"cannot read tag list {text!r}")
    return items


def _check_tag(tag: Any) -> str:
    if not isinstance(tag, str):
        raise TagFormatError(f"tag is not a string: {tag!r}")
    t = tag.strip()
    key, sep, value = t.partition(":")
    if not sep or not key.strip() or not value.strip():
        raise TagFormatError(f"tag is not of the form key:value: {tag!r}")
    return str(t)


def _dict_tags(raw: dict[Any, Any]) -> tuple[str, ...]:
    pairs = []
    for key, value in raw.items():
        # None and "" both mean "no value": other converters write cluster: "" for criteria
        # outside any cluster, where the official files have no cluster key at all
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        if not isinstance(key, str) or not isinstance(value, str):
            raise TagFormatError(f"tag {key!r}: {value!r} is not a string pair")
        pairs.append((key.strip(), value))
    pairs.sort(key=lambda kv: (_DICT_TAG_ORDER.get(kv[0], len(_DICT_TAG_ORDER)), kv[0]))
    return tuple(_check_tag(f"{k}:{v}") for k, v in pairs)


def normalize_tags(raw: Any) -> tuple[str, ...]:
    """Tags in any stored form, as a tuple of `key:value` strings.

    Accepts None (no tags), a list/tuple/numpy array of strings, a dict such as
    `{"axis": "accuracy", "cluster": None, "level": "example"}` (None and "" values skipped), a JSON
    list string, numpy's string form of an array (`"['level:example' 'axis:accuracy']"`, may
    span lines), a JSON object string, or one `key:value` string. Raises TagFormatError for
    anything else, and for any tag that is not a string with a colon.
    """
    if raw is None:
        return ()
    if isinstance(raw, np.ndarray):
        raw = raw.tolist()
    if isinstance(raw, dict):
        return _dict_tags(raw)
    if isinstance(raw, str):
        s = raw.strip()
        if not s:
            return ()
        if s.startswith("[") or s.startswith("array("):
            return tuple(_check_tag(t) for t in _parse_list_string(s))
        if s.startswith("{"):
            try:
                parsed = json.loads(s)
            except json.JSONDecodeError as err:
                raise TagFormatError(f"cannot read tag object {raw!r}: {err}") from None
            if not isinstance(parsed, dict):
                raise TagFormatError(f"cannot read tag object {raw!r}")
            return _dict_tags(parsed)
        return (_check_tag(s),)
    if isinstance(raw, (list, tuple)):
        return tuple(_check_tag(t) for t in raw)
    raise TagFormatError(f"tags must be a list, dict or string, got {type(raw).__name__}")


def tags_to_dict(tags: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for t in tags:
        key, _, value = t.partition(":")
        if key in out:
            raise ValueError(
                f"tags {list(tags)!r} repeat the key {key!r} and cannot be stored as a dict; "
                "use tag_style='list'"
            )
        out[key] = value
    return out
