"""The training dataset: rubric examples as the rows GRPOTrainer reads (and back), without the
examples whose prompt or full-rubric scaffold would not fit.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

from ruscarl_lib.data.rubric import Criterion, RubricExample

# Dataset columns the trainer reads. `prompt` is TRL's own column.
PROMPT_COLUMN = "prompt"
ID_COLUMN = "example_id"
RUBRIC_COLUMN = "rubric"

log = logging.getLogger(__name__)


def example_to_row(example: RubricExample) -> dict[str, Any]:
    """The training-dataset row of one example: TRL's `prompt` plus id and rubric columns."""
    return {
        PROMPT_COLUMN: [{"role": m["role"], "content": m["content"]} for m in example.messages],
        ID_COLUMN: str(example.id),
        RUBRIC_COLUMN: [
            {"criterion": c.text, "points": float(c.points), "tags": list(c.tags)}
            for c in example.rubric
        ],
    }


def row_to_example(row: dict[str, Any]) -> RubricExample:
    """Rebuild the example a dataset row came from (what scaffolds and judges need)."""
    missing = [k for k in (PROMPT_COLUMN, ID_COLUMN, RUBRIC_COLUMN) if k not in row]
    if missing:
        raise KeyError(
            f"training rows need the columns {PROMPT_COLUMN!r}, {ID_COLUMN!r} and "
            f"{RUBRIC_COLUMN!r}; missing {missing} (build the dataset with to_train_dataset)"
        )
    rubric = [
        Criterion(text=str(c["criterion"]), points=float(c["points"]), tags=tuple(c.get("tags") or ()))
        for c in row[RUBRIC_COLUMN]
    ]
    return RubricExample(id=str(row[ID_COLUMN]), messages=list(row[PROMPT_COLUMN]), rubric=rubric)


def to_train_dataset(examples: Sequence[RubricExample]):
    """A `datasets.Dataset` with one row per example, in the layout the trainer reads."""
    from datasets import Dataset

    return Dataset.from_list([example_to_row(ex) for ex in examples])


def prompt_length(tokenizer, messages: list[dict]) -> int:
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    return len(ids["input_ids"])


def scaffold_length(tokenizer, example: Any, scaffold: Any = None) -> int:
    """Tokens the full-rubric scaffold adds to `example`'s prompt (rendered with the scaffold
    settings: points shown or not, the no-reveal line): the most any rollout can add."""
    from ruscarl_lib.scaffold.render import render_scaffold

    show_points = scaffold.show_points if scaffold is not None else True
    warn = scaffold.warn_no_reveal if scaffold is not None else True
    full = render_scaffold(example.messages, list(example.rubric), show_points=show_points, warn_no_reveal=warn)
    return prompt_length(tokenizer, full) - prompt_length(tokenizer, example.messages)


def build_train_dataset(
    examples: Sequence[Any],
    tokenizer,
    max_prompt_length: int,
    *,
    max_scaffold_tokens: int | None = None,
    scaffold: Any = None,
    overlong_scaffold: str = "drop",
):
    """Training rows for `examples`, without those whose clean prompt is too long, and (with
    `max_scaffold_tokens`) without those whose full-rubric scaffold would add more tokens.

    verl drops overlong prompts too (instead of truncating the conversation): a cut
    conversation would be graded against a rubric written for the whole one. The scaffold
    limit sizes the generation engine's context (prompt + scaffold + completion), so a longer
    scaffold would be cut or overflow there; `overlong_scaffold: error` stops before training
    instead of dropping. The limit applies with scaffolds off as well, so RuscaRL and the
    baseline train on the same rows.
    """
    kept, dropped = [], []
    for ex in examples:
        (kept if prompt_length(tokenizer, ex.messages) <= max_prompt_length else dropped).append(ex)
    if dropped:
        log.warning(
            "dropped %d of %d examples whose prompt exceeds max_prompt_length=%d (first: %s)",
            len(dropped), len(examples), max_prompt_length, dropped[0].id,
        )
    if max_scaffold_tokens is not None:
        if overlong_scaffold not in ("drop", "error"):
            raise ValueError(f"overlong_scaffold must be 'drop' or 'error', got {overlong_scaffold!r}")
        lengths = [(ex, scaffold_length(tokenizer, ex, scaffold)) for ex in kept]
        over = [(ex, n) for ex, n in lengths if n > max_scaffold_tokens]
        if over and overlong_scaffold == "error":
            worst = max(over, key=lambda x: x[1])
            raise ValueError(
                f"{len(over)} of {len(kept)} examples have a full-rubric scaffold longer than "
                f"train.max_scaffold_tokens={max_scaffold_tokens} (longest: example {worst[0].id!r}, "
                f"{worst[1]} tokens); raise the limit or set train.overlong_scaffold: drop"
            )
        if over:
            log.warning(
                "dropped %d of %d examples whose full-rubric scaffold exceeds max_scaffold_tokens=%d "
                "(first: %s, %d tokens)", len(over), len(kept), max_scaffold_tokens, over[0][0].id, over[0][1],
            )
            kept = [ex for ex, n in lengths if n <= max_scaffold_tokens]
    if not kept:
        raise ValueError("no example fits max_prompt_length and max_scaffold_tokens")
    return to_train_dataset(kept)
