"""Grading saved answers with any Judge, chunk by chunk (pure: no model needed).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable, Sequence, TypeVar

import pandas as pd

from ruscarl_lib.common.paths import (
    atomic_write_text,
)
from ruscarl_lib.data.rubric import RubricExample
from ruscarl_lib.evaluate.folder import VERDICT_ROW_COLUMNS, VERDICTS_DIR, ChunkStore
from ruscarl_lib.evaluate.generate import chunk_ranges, eval_prompts


__all__ = [
    "grade_responses",
]


T = TypeVar("T")


def run_coroutine(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion, also from inside a running loop (Jupyter kernels)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


def _verdict_rows(example: RubricExample, sample_index: int, verdicts: Sequence[Any]) -> list[dict[str, Any]]:
    rows = []
    for i, (criterion, v) in enumerate(zip(example.rubric, verdicts)):
        rows.append({
            "example_id": example.id, "sample_index": int(sample_index), "criterion_index": i,
            "points": float(criterion.points), "met": None if v.failed else bool(v.met),
            "failed": bool(v.failed), "failure_kind": v.failure_kind, "source": v.source,
            "explanation": v.explanation, "criterion_tags": list(criterion.tags),
            "example_tags": list(example.tags),
            "prompt_tokens": int(v.prompt_tokens), "completion_tokens": int(v.completion_tokens),
            "latency_s": float(v.latency_s),
        })
    return rows


def stats_dict(stats: Any) -> dict[str, Any]:
    return stats.to_dict() if hasattr(stats, "to_dict") else dict(stats or {})


def _sum_stats(parts: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Add JudgeStats dicts of several chunks: counts add, maxima take the max."""
    total: dict[str, Any] = {}
    for part in parts:
        for k, v in part.items():
            if isinstance(v, dict):
                acc = total.setdefault(k, {})
                for kk, vv in v.items():
                    acc[kk] = acc.get(kk, 0) + vv
            elif k.endswith("_max_s") or k == "max_in_flight":
                total[k] = max(total.get(k, 0), v)
            elif isinstance(v, (int, float)):
                total[k] = total.get(k, 0) + v
    return total


def grade_responses(
    responses: pd.DataFrame,
    examples: Sequence[RubricExample],
    judge: Any,
    out_dir: str | Path | None = None,
    *,
    chunk_size: int = 64,
    overwrite: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """One row per (response, criterion) with the judge's verdict (columns VERDICT_ROW_COLUMNS+).

    The judge sees each example's clean conversation and full rubric. With `out_dir`, verdicts
    are saved per chunk of `chunk_size` responses under `verdicts/` together with that chunk's
    judge accounting, and chunks already there are not graded again.
    """
    by_id = {ex.id: ex for ex in examples}
    missing = sorted(set(responses["example_id"]) - set(by_id))
    if missing:
        raise KeyError(f"responses for unknown example ids: {missing[:5]}")
    responses = responses.reset_index(drop=True)
    chunks = chunk_ranges(len(responses), chunk_size)
    store = None
    if out_dir is not None:
        key = hashlib.sha256()
        for r in responses[["example_id", "sample_index", "response"]].itertuples(index=False):
            key.update(json.dumps([r.example_id, int(r.sample_index), r.response]).encode())
        fingerprint = {"stage": "grade", "judge": judge.fingerprint(), "responses": key.hexdigest()[:16],
                       "chunk_size": chunk_size}
        store = ChunkStore(Path(out_dir) / VERDICTS_DIR, fingerprint, overwrite=overwrite)
    done = store.done() if store is not None else set()
    todo = [k for k in range(len(chunks)) if k not in done]
    results: dict[int, pd.DataFrame] = {}

    async def grade_all() -> None:
        from ruscarl_lib.judges.verdict import GradingItem

        try:
            for k in todo:
                part = responses.iloc[list(chunks[k])]
                items = [GradingItem(eval_prompts([by_id[r.example_id]])[0], str(r.response),
                                     list(by_id[r.example_id].rubric)) for r in part.itertuples()]
                before = judge.stats.copy()
                label = f"grading chunk {k + 1}/{len(chunks)}" if progress else False
                verdicts = await judge.grade_many(items, progress=label)
                spent = judge.stats.since(before)
                rows = [row for r, vs in zip(part.itertuples(), verdicts)
                        for row in _verdict_rows(by_id[r.example_id], r.sample_index, vs)]
                frame = _verdict_frame(rows)
                if store is not None:
                    atomic_write_text(store.dir / f"stats-{k:06d}.json", json.dumps(stats_dict(spent), default=str))
                    store.write(k, frame)
                results[k] = frame
        finally:
            await judge.aclose()

    if todo:
        run_coroutine(grade_all)
    frames = [results[k] if k in results else pd.read_parquet(store.path(k)) for k in range(len(chunks))]  # type: ignore[union-attr]
    frames = [f for f in frames if len(f)]
    table = pd.concat(frames, ignore_index=True) if frames else _verdict_frame([])
    return _normalise_verdicts(table)


def _verdict_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    columns = list(VERDICT_ROW_COLUMNS) + ["prompt_tokens", "completion_tokens", "latency_s"]
    frame = pd.DataFrame(rows, columns=columns)
    frame["met"] = frame["met"].astype("boolean")
    return frame


def _normalise_verdicts(table: pd.DataFrame) -> pd.DataFrame:
    """Same dtypes whether the table was just built or read back from parquet."""
    table = table.copy()
    table["met"] = table["met"].astype("boolean")
    for col in ("criterion_tags", "example_tags"):
        table[col] = [list(t) if t is not None else [] for t in table[col]]
    return table


def grading_stats(out_dir: str | Path) -> dict[str, Any]:
    """Judge accounting summed over every saved verdict chunk (all sessions of a resumed run)."""
    folder = Path(out_dir) / VERDICTS_DIR
    done = {f.stem.split("-")[1] for f in folder.glob("part-*.parquet")}
    parts = [json.loads(f.read_text()) for f in sorted(folder.glob("stats-*.json")) if f.stem.split("-")[1] in done]
    return _sum_stats(parts)


def verdict_samples(out_dir: str | Path, examples: Sequence[RubricExample], n_answers: int = 1,
                    text_chars: int = 90) -> pd.DataFrame:
    """What the judge said about the first `n_answers` answers, criterion by criterion: the
    criterion text (shortened), its points, the verdict or failure kind, the judge's explanation,
    and its cost, so a report shows whether verdicts look right, not only how many failed."""
    out = Path(out_dir)
    verdicts = pd.read_parquet(out / "verdicts.parquet")
    by_id = {ex.id: ex for ex in examples}
    answers = verdicts[["example_id", "sample_index"]].drop_duplicates().head(n_answers)
    picked = verdicts.merge(answers, on=["example_id", "sample_index"])

    def short(text: str) -> str:
        return text if len(text) <= text_chars else text[: text_chars - 1] + "…"

    rows = []
    for r in picked.itertuples():
        ex = by_id.get(r.example_id)
        criterion = ex.rubric[int(r.criterion_index)].text if ex is not None else "?"
        rows.append({"example_id": r.example_id, "sample": int(r.sample_index), "criterion": short(criterion),
                     "points": r.points, "verdict": f"failed ({r.failure_kind})" if r.failed else ("met" if r.met else "not met"),
                     "explanation": short(r.explanation or ""), "source": r.source,
                     "tokens": int(r.prompt_tokens + r.completion_tokens), "latency_s": round(float(r.latency_s), 2)})
    return pd.DataFrame(rows)
