"""Verdicts, the judge interface and judge accounting.

Every judge (LLM, rule, cache, composite) answers the same question - does this response meet
each of these criteria? - with one `Verdict` per criterion, in criterion order. A verdict that
could not be obtained is never guessed: it is marked `failed` with a `failure_kind`, and the
scoring failure policy decides later what it is worth (METHOD.md section 3).
"""

from __future__ import annotations

import abc
import contextvars
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Literal, Sequence

from ruscarl_lib.data.rubric import Criterion

Source = Literal["judge", "rule", "cache"]

# Failure kinds used by the judges of this package. Users' rules may add their own.
FAILURE_KINDS: tuple[str, ...] = (
    "timeout",  # no answer within timeout_s
    "http_429",  # rate limited
    "http_5xx",  # server error
    "http_4xx",  # request rejected (bad request, auth, unknown model, ...)
    "connection",  # refused, reset, dropped
    "client_error",  # any other error raised by the HTTP client
    "protocol",  # HTTP 200 whose body is not a chat completion
    "parse",  # judge output is not JSON
    "schema",  # judge output is JSON of the wrong shape, or omits a criterion
    "unknown_rule",  # `verifier:rule` criterion naming an unregistered function
    "rule_params",  # rule parameters could not be read
    "rule_error",  # the rule raised
    "rule_unavailable",  # the rule needs an optional package that is not installed
    "no_judge",  # criterion needs an LLM judge but only rules are configured
)

ProgressFn = Callable[[int], None]


@dataclass
class Verdict:
    """One judge decision about one criterion.

    `met` is None exactly when `failed` is True. For a negative (undesirable) criterion,
    `met=True` means the response did the undesirable thing. Token counts are this verdict's
    share of the call(s) that produced it, so they add up to the call totals.
    """

    met: bool | None
    failed: bool = False
    failure_kind: str | None = None
    explanation: str = ""
    source: Source = "judge"
    latency_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # How the request that produced it was sampled ({"temperature", "structured"}); the retry
    # path may change both, and the verdict cache keys a verdict by what actually produced it.
    settings: dict[str, Any] | None = field(default=None, compare=False)

    @classmethod
    def failure(cls, kind: str, explanation: str, source: Source = "judge", **kw: Any) -> "Verdict":
        return cls(met=None, failed=True, failure_kind=kind, explanation=explanation, source=source, **kw)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Verdict":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass
class GradingItem:
    """One response to grade: the clean conversation (never a scaffold), the response, its criteria."""

    conversation: list[dict[str, Any]]
    response: str
    criteria: Sequence[Criterion]


# --------------------------------------------------------------------------------------------
# Accounting
# --------------------------------------------------------------------------------------------


@dataclass
class JudgeStats:
    """Counters of judge work. Cumulative; take `copy()` before a step and `since()` after.

    `calls` are HTTP requests actually sent (retries included); `failures` count final failed
    verdicts by kind, `errors` count failed attempts (which may have been retried successfully).
    """

    batches: int = 0
    criteria: int = 0
    calls: int = 0
    retries: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    deduplicated: int = 0
    rule_verdicts: int = 0
    failed: int = 0
    failures: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    call_latency_s: float = 0.0
    call_latency_max_s: float = 0.0
    wall_s: float = 0.0
    max_in_flight: int = 0

    def record_failure(self, kind: str, n: int = 1) -> None:
        self.failed += n
        self.failures[kind] += n

    def copy(self) -> "JudgeStats":
        c = JudgeStats(**{k: v for k, v in self.__dict__.items()})
        c.failures = Counter(self.failures)
        c.errors = Counter(self.errors)
        return c

    def since(self, earlier: "JudgeStats") -> "JudgeStats":
        """The work done between `earlier` (a copy) and now. Maxima are kept as of now."""
        d = JudgeStats()
        for k, v in self.__dict__.items():
            if k in ("failures", "errors"):
                diff = Counter(v)
                diff.subtract(getattr(earlier, k))
                setattr(d, k, Counter({kk: vv for kk, vv in diff.items() if vv}))
            elif k.endswith("_max_s") or k == "max_in_flight":
                setattr(d, k, v)
            else:
                setattr(d, k, v - getattr(earlier, k))
        return d

    def reset(self) -> None:
        fresh = JudgeStats()
        self.__dict__.update(fresh.__dict__)

    def as_metrics(self, prefix: str = "judge/") -> dict[str, float]:
        """Flat float metrics for trainer logs. Every known failure kind is always present."""
        m: dict[str, float] = {
            "criteria": self.criteria,
            "calls": self.calls,
            "retries": self.retries,
            "cache_hits": self.cache_hits,
            "cache_hit_rate": self.cache_hits / max(1, self.cache_hits + self.cache_misses),
            "deduplicated": self.deduplicated,
            "rule_verdicts": self.rule_verdicts,
            "failed": self.failed,
            "failed_frac": self.failed / max(1, self.criteria),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "call_latency_mean_s": self.call_latency_s / max(1, self.calls),
            "call_latency_max_s": self.call_latency_max_s,
            "wall_s": self.wall_s,
        }
        kinds = list(FAILURE_KINDS) + sorted(k for k in self.failures if k not in FAILURE_KINDS)
        for kind in kinds:
            m[f"failures/{kind}"] = self.failures.get(kind, 0)
        return {prefix + k: float(v) for k, v in m.items()}

    def summary(self) -> str:
        """One human line, for notebooks and end-of-run logs."""
        fails = ", ".join(f"{k}={v}" for k, v in sorted(self.failures.items())) or "none"
        rate = self.criteria / self.wall_s if self.wall_s > 0 else float("nan")
        return (
            f"{self.criteria} criteria in {self.batches} batches, {self.wall_s:.1f}s "
            f"({rate:.1f}/s); {self.calls} calls ({self.retries} retries), "
            f"{self.cache_hits} cache hits, {self.deduplicated} deduplicated, {self.rule_verdicts} rule verdicts; "
            f"failed {self.failed} ({fails}); tokens {self.prompt_tokens}+{self.completion_tokens}"
        )

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["failures"] = dict(self.failures)
        d["errors"] = dict(self.errors)
        return d


# --------------------------------------------------------------------------------------------
# Interface
# --------------------------------------------------------------------------------------------

# Depth of nested grade_many calls in this task, so that only the outermost one books wall time.
_batch_depth: contextvars.ContextVar[int] = contextvars.ContextVar("ruscarl_judge_depth", default=0)


class Judge(abc.ABC):
    """Grades responses against criteria; one verdict per criterion, in order.

    Subclasses implement `_grade_many` (and may keep the default, which grades items one by
    one concurrently through `_grade_item`). Callers use `grade` for one response and
    `grade_many` for a batch, which lets caches and batching layers see the whole batch.
    """

    stats: JudgeStats
    params: Any = None  # the JudgeParams this judge was built from, when there are any

    def __init__(self, stats: JudgeStats | None = None) -> None:
        self.stats = stats if stats is not None else JudgeStats()

    async def grade(
        self, conversation: list[dict[str, Any]], response: str, criteria: Sequence[Criterion]
    ) -> list[Verdict]:
        """Verdicts for one response. `conversation` must be the clean one (no scaffold)."""
        return (await self.grade_many([GradingItem(conversation, response, list(criteria))]))[0]

    async def grade_many(
        self, items: Sequence[GradingItem], progress: bool | str = False
    ) -> list[list[Verdict]]:
        """Verdicts for many responses at once; `progress` shows a tqdm bar (a str is its label)."""
        items = list(items)
        depth = _batch_depth.get()
        token = _batch_depth.set(depth + 1)
        bar = None
        on_done: ProgressFn | None = None
        if progress and depth == 0:
            from tqdm.auto import tqdm

            total = sum(len(it.criteria) for it in items)
            bar = tqdm(total=total, desc=progress if isinstance(progress, str) else "grading",
                       unit="crit", leave=False)
            on_done = bar.update
        t0 = time.perf_counter()
        try:
            out = await self._grade_many(items, on_done)
        finally:
            _batch_depth.reset(token)
            if bar is not None:
                bar.close()
            if depth == 0:
                self.stats.batches += 1
                self.stats.wall_s += time.perf_counter() - t0
        if depth == 0:
            self.stats.criteria += sum(len(it.criteria) for it in items)
            from ruscarl_lib.common.progress import emit

            emit("judge", judge=type(self).__name__, criteria=self.stats.criteria, calls=self.stats.calls,
                 failed=self.stats.failed, every_s=0.5)
        for it, verdicts in zip(items, out):
            if len(verdicts) != len(it.criteria):
                raise RuntimeError(
                    f"{type(self).__name__} returned {len(verdicts)} verdicts for "
                    f"{len(it.criteria)} criteria"
                )
        return out

    async def _grade_many(
        self, items: list[GradingItem], on_done: ProgressFn | None
    ) -> list[list[Verdict]]:
        import asyncio

        async def one(it: GradingItem) -> list[Verdict]:
            v = await self._grade_item(it)
            if on_done is not None:
                on_done(len(v))
            return v

        return list(await asyncio.gather(*(one(it) for it in items)))

    async def _grade_item(self, item: GradingItem) -> list[Verdict]:
        raise NotImplementedError

    def fingerprint(self) -> dict[str, Any]:
        """Everything about this judge that can change a verdict (used in cache keys)."""
        return {"judge": type(self).__name__}

    async def aclose(self) -> None:
        """Release network resources held for the running event loop."""
