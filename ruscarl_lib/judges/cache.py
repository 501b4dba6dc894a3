"""A verdict cache on disk, so re-grading the same rollouts costs no judge calls.

Keys hash everything that can change a verdict: the judge fingerprint (model, prompt version,
sampling params, mode), how the producing request was actually sampled (the retry path raises
the temperature after unreadable output, and an endpoint that rejects structured output falls
back to plain JSON prompting: such verdicts are stored under their own settings, so they are
never served as first-attempt verdicts), the conversation as the grader sees it, the
response, and the criterion's text and points. Tags are not part of the key (the grader never sees them).
In `batched`/`all` modes the criteria graded alongside are not part of the key either: the
verdict is about one criterion, and the mode is in the fingerprint.

Only successful verdicts are stored; failures are retried next time. The store is SQLite in
WAL mode with a busy timeout, so several processes (ranks, notebooks, evaluation jobs) can
read and write the same file at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

from ruscarl_lib.data.rubric import Criterion
from ruscarl_lib.judges.prompts import render_conversation
from ruscarl_lib.judges.verdict import GradingItem, Judge, JudgeStats, ProgressFn, Verdict

log = logging.getLogger(__name__)

_SCHEMA_VERSION = 1
_CHUNK = 500  # keys per SELECT ... IN (...), well under SQLite's variable limit


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def item_prefix(fingerprint: dict[str, Any], conversation: Sequence[dict[str, Any]], response: str) -> str:
    """Hash of the parts of a key shared by all criteria of one response."""
    return _sha(json.dumps(
        {"fp": fingerprint, "conversation": render_conversation(conversation), "response": response},
        sort_keys=True, ensure_ascii=False,
    ))


def criterion_key(prefix: str, criterion: Criterion) -> str:
    return _sha(prefix + "\x00" + json.dumps([criterion.text, float(criterion.points)], ensure_ascii=False))


class VerdictCache:
    """SQLite verdict store; one connection per thread, safe across processes."""

    def __init__(self, path: str | os.PathLike[str], busy_timeout_s: float = 60.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._conn()  # create the file and table now, so configuration errors surface early

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
            self._enable_wal(conn)
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS verdicts ("
                " key TEXT PRIMARY KEY, met INTEGER NOT NULL, explanation TEXT NOT NULL,"
                " created REAL NOT NULL) WITHOUT ROWID"
            )
            conn.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT)")
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(_SCHEMA_VERSION),))
            self._local.conn = conn
        return conn

    def _enable_wal(self, conn: sqlite3.Connection) -> None:
        """Switch to WAL, retrying while another process holds the lock: SQLite does not always
        call the busy handler for a journal-mode change, so two processes opening a new cache
        at once could fail with "database is locked" (seen in CI)."""
        deadline = time.monotonic() + self.busy_timeout_s
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def get_many(self, keys: Iterable[str]) -> dict[str, Verdict]:
        """Cached verdicts (source "cache") for the keys that are present."""
        keys = list(dict.fromkeys(keys))
        out: dict[str, Verdict] = {}
        conn = self._conn()
        for s in range(0, len(keys), _CHUNK):
            chunk = keys[s:s + _CHUNK]
            marks = ",".join("?" * len(chunk))
            for key, met, why in conn.execute(f"SELECT key, met, explanation FROM verdicts WHERE key IN ({marks})", chunk):
                out[key] = Verdict(met=bool(met), explanation=why, source="cache")
        return out

    def put_many(self, entries: Iterable[tuple[str, Verdict]]) -> int:
        """Store successful verdicts (failed ones are skipped); returns how many were written."""
        rows = [(k, int(bool(v.met)), v.explanation, time.time()) for k, v in entries if not v.failed and v.met is not None]
        if not rows:
            return 0
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany("INSERT OR REPLACE INTO verdicts VALUES (?, ?, ?, ?)", rows)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return len(rows)

    def __len__(self) -> int:
        return int(self._conn().execute("SELECT COUNT(*) FROM verdicts").fetchone()[0])

    def clear(self) -> None:
        self._conn().execute("DELETE FROM verdicts")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


class CachedJudge(Judge):
    """Wraps a judge: answers from the cache, sends only the misses, stores what comes back.

    Identical (response, criterion) pairs inside one batch - common when a GRPO group
    produces the same answer twice - are graded once.
    """

    def __init__(self, inner: Judge, cache: VerdictCache | str | os.PathLike[str], stats: JudgeStats | None = None) -> None:
        super().__init__(stats if stats is not None else inner.stats)
        self.inner = inner
        self.cache = cache if isinstance(cache, VerdictCache) else VerdictCache(cache)

    def fingerprint(self) -> dict[str, Any]:
        return self.inner.fingerprint()

    async def aclose(self) -> None:
        await self.inner.aclose()

    def _fingerprint_for(self, settings: dict[str, Any] | None) -> dict[str, Any]:
        fp = dict(self.inner.fingerprint())
        if settings is not None:
            fp["request"] = dict(settings)
        return fp

    def _lookup_settings(self) -> dict[str, Any] | None:
        current = getattr(self.inner, "request_settings", None)
        return current() if callable(current) else None

    async def _grade_many(self, items: list[GradingItem], on_done: ProgressFn | None) -> list[list[Verdict]]:
        lookup = self._lookup_settings()
        fp = self._fingerprint_for(lookup)
        keys = []
        for it in items:
            prefix = item_prefix(fp, it.conversation, it.response)
            keys.append([criterion_key(prefix, c) for c in it.criteria])
        hits = self.cache.get_many(k for ks in keys for k in ks)
        out: list[list[Verdict | None]] = [[hits.get(k) for k in ks] for ks in keys]
        n_hits = sum(v is not None for vs in out for v in vs)
        self.stats.cache_hits += n_hits
        if on_done is not None and n_hits:
            on_done(n_hits)

        # First occurrence of each missing key is graded; later ones wait for it.
        owner: dict[str, tuple[int, int]] = {}
        todo: list[list[int]] = [[] for _ in items]
        for k, ks in enumerate(keys):
            for i, key in enumerate(ks):
                if out[k][i] is None and key not in owner:
                    owner[key] = (k, i)
                    todo[k].append(i)
        self.stats.cache_misses += len(owner)

        async def grade_item(k: int) -> None:
            idx = todo[k]
            it = items[k]
            sub = GradingItem(it.conversation, it.response, [it.criteria[i] for i in idx])
            verdicts = (await self.inner._grade_many([sub], on_done))[0]
            entries = []
            for i, v in zip(idx, verdicts):
                out[k][i] = v
                key = keys[k][i]
                if v.settings is not None and v.settings != lookup:  # made on the retry/fallback path
                    key = criterion_key(item_prefix(self._fingerprint_for(v.settings), it.conversation, it.response),
                                        it.criteria[i])
                entries.append((key, v))
            # Store as each response finishes, so an interrupted batch keeps what it paid for.
            try:
                await asyncio.to_thread(self.cache.put_many, entries)
            except Exception:  # a cache that cannot be written must not lose the verdicts
                log.warning("verdict cache %s: could not store %d verdicts", self.cache.path, len(entries), exc_info=True)

        await asyncio.gather(*(grade_item(k) for k in range(len(items)) if todo[k]))

        n_dup = 0
        for k, ks in enumerate(keys):
            for i, key in enumerate(ks):
                if out[k][i] is None:
                    ok, oi = owner[key]
                    src = out[ok][oi]
                    assert src is not None
                    out[k][i] = Verdict(met=src.met, failed=src.failed, failure_kind=src.failure_kind,
                                        explanation=src.explanation, source="cache")
                    n_dup += 1
                    if src.failed:
                        self.stats.record_failure(src.failure_kind or "unknown")
        if n_dup:
            self.stats.deduplicated += n_dup
            if on_done is not None:
                on_done(n_dup)
        return [[v for v in vs if v is not None] for vs in out]
