"""The grading prompt (our own wording of the rules in METHOD.md section 3) and its parser.

Three variants share one system message: one criterion per call (HealthBench style), a subset
of k criteria per call, and the whole rubric in one call. Multi-criterion variants number the
criteria and expect one result per number, so the same verdicts come back whatever the mode.
The grader is shown the clean conversation only: callers must never pass a scaffolded prompt.

Change PROMPT_VERSION whenever the wording or output format changes: it is part of every
cache key, so old verdicts are not reused for a different prompt.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal, Sequence

from ruscarl_lib.data.rubric import Criterion

PROMPT_VERSION = "ruscarl-judge-v1"

Scope = Literal["one", "some", "all"]

SYSTEM_PROMPT = """\
You grade an AI assistant's reply against rubric criteria written by experts.

You are given a conversation between a user and the assistant, the assistant's final reply \
to that conversation, and one or more criteria. For each criterion, decide whether the reply \
satisfies it. Follow these rules:

1. Grade the final reply only, reading it in the context of the conversation.
2. A criterion is satisfied only when everything it asks for holds. If one required part is \
missing or wrong, the criterion is not satisfied.
3. When a criterion lists examples (after "such as", "for example", "e.g.", "including", and \
the like), the reply does not have to mention every listed example to satisfy it; the examples \
illustrate the requirement rather than enumerate it.
4. Criteria with negative points describe something the reply should NOT do. Grade them \
literally all the same: "criteria_met" is true when the reply DOES the undesirable thing, and \
false when it does not. Never invert your answer because the points are negative.
5. Judge only what the criterion states; do not reward or penalise anything else.

Answer with a single JSON object and nothing else: no markdown fences, no text before or after."""

_SINGLE_INSTRUCTION = """\
Return a JSON object with exactly these keys:
{"explanation": "<one or two sentences on why the criterion is or is not met>", \
"criteria_met": <true or false>}"""

_MULTI_INSTRUCTION = """\
Return a JSON object with one result per criterion number, in any order:
{"results": [{"criterion": <number>, "explanation": "<one or two sentences>", \
"criteria_met": <true or false>}, ...]}
Include every number from 1 to {n} exactly once."""

_SCOPE_NOTE = {
    "some": "These criteria are part of a longer rubric; grade each one on its own.",
    "all": "These criteria are the complete rubric for this reply; grade each one on its own.",
}


def message_text(content: Any) -> str:
    """Message content as text (content may be a list of typed parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for p in content:
            if isinstance(p, dict):
                parts.append(str(p.get("text", "")) if p.get("type", "text") == "text" else f"[{p.get('type')}]")
            else:
                parts.append(str(p))
        return "".join(parts)
    return str(content)


def render_conversation(messages: Sequence[dict[str, Any]]) -> str:
    """A plain transcript: one `[role]` header per message."""
    return "\n\n".join(f"[{m.get('role', 'user')}]\n{message_text(m.get('content')).strip()}" for m in messages)


def format_points(points: float) -> str:
    p = float(points)
    return str(int(p)) if p.is_integer() else f"{p:g}"


def build_messages(
    conversation: Sequence[dict[str, Any]],
    response: str,
    criteria: Sequence[Criterion],
    scope: Scope,
) -> list[dict[str, str]]:
    """Chat messages asking the grader about `criteria` (one criterion iff scope == "one")."""
    if scope == "one" and len(criteria) != 1:
        raise ValueError(f"scope 'one' takes exactly one criterion, got {len(criteria)}")
    head = (
        f"<conversation>\n{render_conversation(conversation)}\n</conversation>\n\n"
        f"<reply>\n{response.strip()}\n</reply>\n\n"
    )
    if scope == "one":
        c = criteria[0]
        body = f'<criterion points="{format_points(c.points)}">\n{c.text.strip()}\n</criterion>\n\n'
        return [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": head + body + _SINGLE_INSTRUCTION},
        ]
    items = "\n".join(
        f'<criterion number="{i}" points="{format_points(c.points)}">\n{c.text.strip()}\n</criterion>'
        for i, c in enumerate(criteria, 1)
    )
    body = f"{_SCOPE_NOTE[scope]}\n<criteria>\n{items}\n</criteria>\n\n"
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": head + body + _MULTI_INSTRUCTION.replace("{n}", str(len(criteria)))},
    ]


# --------------------------------------------------------------------------------------------
# Structured output schemas (OpenAI `response_format` json_schema)
# --------------------------------------------------------------------------------------------

_VERDICT_PROPS = {
    "explanation": {"type": "string"},
    "criteria_met": {"type": "boolean"},
}


def response_format(scope: Scope, explanation_max_chars: int | None = None) -> dict[str, Any]:
    """The `response_format` argument that constrains the grader to the expected JSON.

    `explanation_max_chars` caps the explanation string in the schema itself (`maxLength`), so
    a small grader that would ramble until `max_tokens` cuts its JSON must close the string and
    give its verdict instead (measured with SmolLM2-135M behind vLLM: 3 of 6 answers cut at 256
    tokens without a cap, none with a 160-character cap).
    """
    props: dict[str, Any] = {k: dict(v) for k, v in _VERDICT_PROPS.items()}
    if explanation_max_chars is not None:
        props["explanation"]["maxLength"] = explanation_max_chars
    if scope == "one":
        name = "criterion_verdict"
        schema: dict[str, Any] = {
            "type": "object",
            "properties": props,
            "required": ["explanation", "criteria_met"],
            "additionalProperties": False,
        }
    else:
        name = "criteria_verdicts"
        item = {
            "type": "object",
            "properties": {"criterion": {"type": "integer"}, **props},
            "required": ["criterion", "explanation", "criteria_met"],
            "additionalProperties": False,
        }
        schema = {
            "type": "object",
            "properties": {"results": {"type": "array", "items": item}},
            "required": ["results"],
            "additionalProperties": False,
        }
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")


class GraderOutputError(ValueError):
    """The grader's text could not be turned into verdicts; `kind` is "parse" or "schema"."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def strip_think(text: str) -> str:
    """Remove `<think>...</think>` blocks; text before a dangling `</think>` is reasoning too."""
    text = _THINK_BLOCK.sub("", text or "")
    if "</think>" in text.lower():
        text = text[text.lower().rfind("</think>") + len("</think>"):]
    if "<think>" in text.lower():  # reasoning never closed: there is no answer after it
        text = text[: text.lower().find("<think>")]
    return text.strip()


def extract_json(text: str) -> Any:
    """The first JSON object or array in `text` (after removing reasoning and code fences)."""
    body = strip_think(text)
    body = _FENCE.sub("", body.strip())
    try:
        return json.loads(body)
    except json.JSONDecodeError:
        pass
    decoder = json.JSONDecoder()
    for m in re.finditer(r"[{\[]", body):
        try:
            value, _ = decoder.raw_decode(body, m.start())
            if isinstance(value, (dict, list)):
                return value
        except json.JSONDecodeError:
            continue
    snippet = body[:80].replace("\n", " ")
    raise GraderOutputError("parse", f"grader output is not JSON: {snippet!r}")


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "false", "no"):
        return value.strip().lower() in ("true", "yes")
    raise GraderOutputError("schema", f"criteria_met must be true or false, got {value!r}")


def parse_single(text: str) -> tuple[bool, str]:
    """(met, explanation) from a one-criterion answer."""
    obj = extract_json(text)
    if isinstance(obj, dict) and "results" in obj and isinstance(obj["results"], list) and len(obj["results"]) == 1:
        obj = obj["results"][0]
    if not isinstance(obj, dict) or "criteria_met" not in obj:
        raise GraderOutputError("schema", "grader answer has no 'criteria_met'")
    return _as_bool(obj["criteria_met"]), str(obj.get("explanation", ""))


def parse_multi(text: str, n: int) -> tuple[dict[int, tuple[bool, str]], dict[int, str]]:
    """Verdicts by criterion number (1..n) from a multi-criterion answer.

    Returns (found, problems): numbers with a usable verdict, and for the other numbers the
    reason they are missing. Accepts `{"results": [...]}`, a bare list, or an object keyed by
    number. Raises GraderOutputError when nothing usable came back.
    """
    obj = extract_json(text)
    entries: list[tuple[Any, Any]] = []
    if isinstance(obj, dict) and isinstance(obj.get("results"), list):
        obj = obj["results"]
    if isinstance(obj, list):
        for e in obj:
            if isinstance(e, dict):
                entries.append((e.get("criterion", e.get("number")), e))
    elif isinstance(obj, dict):
        entries = [(k, v) for k, v in obj.items() if isinstance(v, (dict, bool))]
    else:
        raise GraderOutputError("schema", "grader answer is neither a list nor an object")
    found: dict[int, tuple[bool, str]] = {}
    for key, e in entries:
        try:
            num = int(key)
        except (TypeError, ValueError):
            continue
        if not 1 <= num <= n or num in found:
            continue
        try:
            if isinstance(e, bool):
                found[num] = (e, "")
            elif "criteria_met" in e:
                found[num] = (_as_bool(e["criteria_met"]), str(e.get("explanation", "")))
        except GraderOutputError:
            continue
    if not found:
        raise GraderOutputError("schema", f"grader answer holds no usable verdict for criteria 1..{n}")
    problems = {i: "grader omitted this criterion or gave an invalid verdict" for i in range(1, n + 1) if i not in found}
    return found, problems
