"""What an evaluation folder holds, and the resumable chunk files its stages write.

  generations/part-NNNNNN.parquet   answers, one chunk of prompts per file
  verdicts/part-NNNNNN.parquet      one row per (response, criterion), one chunk of responses per file
  generations.parquet, verdicts.parquet, scores.parquet, tag_scores.csv, report.json

A chunk file appears only complete (written under a temporary name, then renamed), so after
an interruption the finished chunks are kept and only missing ones are redone. A manifest per
stage records what produced the chunks; resuming with different settings is refused rather
than silently mixing two evaluations.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from ruscarl_lib.common.paths import (
    atomic_write_parquet,
    atomic_write_text,
)

GENERATIONS_DIR = "generations"
VERDICTS_DIR = "verdicts"
MANIFEST_FILE = "manifest.json"
REPORT_FILE = "report.json"

GENERATION_COLUMNS = (
    "example_id", "sample_index", "response", "response_ids", "n_tokens", "truncated", "prompt_tokens",
)
VERDICT_ROW_COLUMNS = (
    "example_id", "sample_index", "criterion_index", "points", "met", "failed", "failure_kind",
    "source", "explanation", "criterion_tags", "example_tags",
)


__all__ = [
    "EvalStateError",
    "ChunkStore",
]


class EvalStateError(RuntimeError):
    """The output folder holds chunks from a different evaluation (other model, data or judge)."""


def _fingerprint_hash(fingerprint: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()[:16]


class ChunkStore:
    """A folder of numbered parquet chunks plus a manifest naming what produced them.

    A folder whose manifest differs from `fingerprint` is refused; `overwrite=True` starts over
    instead, deleting every chunk already there (whatever made it), so nothing old is reused.
    Chunks are written atomically, so a chunk that exists is complete; the stray temporary files
    of an interrupted write are removed on open.
    """

    def __init__(self, folder: str | Path, fingerprint: dict[str, Any], *, overwrite: bool = False) -> None:
        self.dir = Path(folder)
        self.dir.mkdir(parents=True, exist_ok=True)
        manifest = self.dir / MANIFEST_FILE
        wanted = {"fingerprint": fingerprint, "hash": _fingerprint_hash(fingerprint)}
        if manifest.exists() and not overwrite:
            found = json.loads(manifest.read_text())
            if found.get("hash") != wanted["hash"]:
                raise EvalStateError(
                    f"{self.dir} holds chunks made with other settings:\n  found  {found.get('fingerprint')}\n"
                    f"  wanted {fingerprint}\nUse another output folder or overwrite=True."
                )
        if overwrite:
            for f in self.dir.glob("part-*.parquet"):
                f.unlink()
        for tmp in self.dir.glob(".part-*.tmp"):
            tmp.unlink()
        atomic_write_text(manifest, json.dumps(wanted, indent=2, default=str))

    def path(self, index: int) -> Path:
        return self.dir / f"part-{index:06d}.parquet"

    def done(self) -> set[int]:
        return {int(f.stem.split("-")[1]) for f in self.dir.glob("part-*.parquet")}

    def write(self, index: int, frame: pd.DataFrame) -> Path:
        return atomic_write_parquet(self.path(index), frame)

    def read(self, indices: Iterable[int] | None = None) -> pd.DataFrame:
        wanted = sorted(self.done() if indices is None else indices)
        frames = [pd.read_parquet(self.path(i)) for i in wanted if self.path(i).exists()]
        frames = [f for f in frames if len(f)]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
