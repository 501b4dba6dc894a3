"""An LLM judge over any OpenAI-compatible chat endpoint (vLLM, OpenAI, others).

Why it looks the way it does:
- Training grades thousands of criteria per step (METHOD.md section 6: ~5,900 calls), so
  requests run concurrently under one semaphore per event loop, spread over several base URLs
  (`judges.endpoints`: least-loaded first, one that keeps failing is skipped for a cool-down).
- Judges are flaky under load. We retry 429/5xx/timeouts/connection errors ourselves with
  exponential backoff and jitter (the openai client's own retries are off so every attempt is
  counted), and re-ask for criteria the grader left out or answered in a broken format.
- A criterion whose verdict cannot be obtained gets a failed Verdict with a failure kind; it
  is never silently "not met".
- At high concurrency the judge client is CPU bound, so the request path is kept lean. When
  aiohttp is installed (`http_backend` in params chooses) requests go through
  `http.AioHttpChatClient`, a direct aiohttp POST whose URL and headers are built once: the
  openai client's per-request machinery (request options, URL parsing, header merging, its
  httpx-to-aiohttp adapter) cost most of the client's CPU. Without aiohttp the official
  `openai.AsyncOpenAI` client is used through its raw `client.post(..., cast_to=bytes)`
  rather than the typed `chat.completions.create` (which re-validates every message and
  builds pydantic models). Both raise the openai exception types (`judges.request_errors`).
- HTTP clients belong to one event loop: they are opened per loop (TRL grades on its own
  loop thread; tests use asyncio.run) and closed when that loop has no grading left.
- The API key is read from the environment variable named in params (`judges.api_key`),
  handed to the client and never stored on the judge, logged, or placed in any message we
  produce.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import random
import sys
import time
import weakref
from typing import Any, Callable, Sequence

import openai

from ruscarl_lib.data.rubric import Criterion
from ruscarl_lib.judges.api_key import JudgeConfigError, resolve_api_key
from ruscarl_lib.judges.request_errors import (
    AttemptError,
    mentions_structured_output,
    retry_after_seconds,
    status_kind,
    transport_kind,
)
from ruscarl_lib.judges.endpoints import Endpoint, EndpointPool
from ruscarl_lib.judges.http import AioHttpChatClient
from ruscarl_lib.judges.prompts import (
    PROMPT_VERSION,
    GraderOutputError,
    Scope,
    build_messages,
    parse_multi,
    parse_single,
    response_format,
)
from ruscarl_lib.judges.server import JudgeServerDied
from ruscarl_lib.judges.verdict import (
    GradingItem,
    Judge,
    JudgeStats,
    ProgressFn,
    Verdict,
)
from ruscarl_lib.params import JudgeParams

log = logging.getLogger(__name__)

# Clients per endpoint with the httpx transport: its connection pool gets slower per request
# as it holds more connections, so large concurrency is spread over several pools.
_CONNECTIONS_PER_CLIENT = 16


async def _with_deadline(coro: Any, seconds: float) -> Any:
    """Await `coro` for at most `seconds` (asyncio.timeout avoids wait_for's extra task)."""
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(seconds):
            return await coro
    return await asyncio.wait_for(coro, seconds)  # pragma: no cover - Python 3.10


class _LoopResources:
    """What must belong to one event loop: the concurrency bound and the HTTP clients."""

    def __init__(self, max_concurrency: int) -> None:
        self.semaphore = asyncio.Semaphore(max_concurrency)
        self.clients: dict[str, list[Any]] = {}  # openai.AsyncOpenAI or AioHttpChatClient
        self.next_client: dict[str, int] = {}
        self.users = 0
        self.in_flight = 0

    async def close(self) -> None:
        clients = [c for cs in self.clients.values() for c in cs]
        self.clients.clear()
        for c in clients:
            try:
                await c.close()
            except Exception:  # closing must never mask a result
                pass


@functools.lru_cache(maxsize=1)
def _aiohttp_available() -> bool:
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        return False
    return True


class OpenAIJudge(Judge):
    """Grades criteria with a chat model. Modes (params.mode) return identical verdict lists:

    - `per_criterion`: one request per criterion (HealthBench style, most robust);
    - `batched`: `criteria_per_call` criteria per request;
    - `all`: the whole rubric of a response in one request.
    """

    def __init__(self, params: JudgeParams, stats: JudgeStats | None = None, *, jitter_seed: int | None = None) -> None:
        super().__init__(stats)
        if not params.base_urls:
            raise JudgeConfigError("judge.base_urls is empty")
        self.params = params
        resolve_api_key(params.api_key_env, params.base_urls)  # fail early, at construction, if the key is missing
        self._backend()  # and if the transport asked for is missing
        self._pool = EndpointPool(params)
        self._rng = random.Random(jitter_seed)  # backoff jitter only
        self._loops: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopResources]" = weakref.WeakKeyDictionary()
        # Set by whoever started the server (judges.server): returns why it cannot answer, or
        # None. Asked after a failed request, so a dead server stops grading at once.
        self.liveness: Callable[[], str | None] | None = None

    def __repr__(self) -> str:
        return f"OpenAIJudge(model={self.params.model!r}, base_urls={self.params.base_urls!r}, mode={self.params.mode!r})"

    def fingerprint(self) -> dict[str, Any]:
        p = self.params
        fp = {
            "judge": "openai",
            "model": p.model,
            "prompt_version": PROMPT_VERSION,
            "temperature": p.temperature,
            "top_p": p.top_p,
            "seed": p.seed,
            "max_tokens": p.max_tokens,
            "extra_body": p.extra_body,
            "structured_output": p.structured_output,
            "retry_temperature": p.retry_temperature,
            "mode": p.mode,
        }
        if p.mode == "batched":
            fp["criteria_per_call"] = p.criteria_per_call
        if p.explanation_max_chars is not None:
            fp["explanation_max_chars"] = p.explanation_max_chars
        return fp

    def request_settings(self) -> dict[str, Any]:
        """How a first attempt is sampled now: the configured temperature, and structured output
        unless an endpoint has rejected it (then requests fall back to plain JSON prompting)."""
        p = self.params
        return {"temperature": p.temperature,
                "structured": bool(p.structured_output and self._pool.all_structured_ok())}

    @property
    def endpoints(self) -> list[dict[str, Any]]:
        """Health of each base URL (for diagnostics)."""
        return self._pool.health()

    # -- resources per event loop -----------------------------------------------------------

    def _resources(self) -> _LoopResources:
        loop = asyncio.get_running_loop()
        res = self._loops.get(loop)
        if res is None:
            res = _LoopResources(self.params.max_concurrency)
            self._loops[loop] = res
        return res

    def _client(self, res: _LoopResources, ep: Endpoint) -> Any:
        clients = res.clients.get(ep.url)
        if clients is None:
            key = resolve_api_key(self.params.api_key_env, self.params.base_urls)
            if self._backend() == "aiohttp":
                clients = [AioHttpChatClient(ep.url, key, self.params.timeout_s)]
            else:
                n = max(1, math.ceil(self.params.max_concurrency / _CONNECTIONS_PER_CLIENT))
                clients = [
                    openai.AsyncOpenAI(base_url=ep.url, api_key=key, max_retries=0, timeout=self.params.timeout_s)
                    for _ in range(n)
                ]
            res.clients[ep.url] = clients
            res.next_client[ep.url] = 0
        i = res.next_client[ep.url]
        res.next_client[ep.url] = (i + 1) % len(clients)
        return clients[i]

    def _backend(self) -> str:
        """The HTTP transport: aiohttp (`AioHttpChatClient`, least CPU) when installed, else httpx."""
        backend = self.params.http_backend
        if backend == "auto":
            return "aiohttp" if _aiohttp_available() else "httpx"
        if backend == "aiohttp" and not _aiohttp_available():
            raise JudgeConfigError("judge.http_backend is 'aiohttp' but aiohttp is not installed (pip install aiohttp)")
        return backend

    async def aclose(self) -> None:
        """Close the HTTP clients of the running loop (they are also closed when idle)."""
        res = self._loops.get(asyncio.get_running_loop())
        if res is not None:
            await res.close()

    # -- one HTTP request ---------------------------------------------------------------------

    def _body(self, messages: list[dict[str, str]], scope: Scope, structured: bool, bad_output: bool) -> dict[str, Any]:
        p = self.params
        body: dict[str, Any] = {
            "model": p.model,
            "messages": messages,
            "temperature": p.temperature,
            "max_tokens": p.max_tokens,
        }
        if bad_output and p.retry_temperature is not None and p.temperature < p.retry_temperature:
            body["temperature"] = p.retry_temperature  # greedy decoding would repeat a broken answer
        if p.top_p is not None:
            body["top_p"] = p.top_p
        if p.seed is not None:
            body["seed"] = p.seed
        if structured:
            body["response_format"] = response_format(scope, p.explanation_max_chars)
        body.update(p.extra_body)
        return body

    async def _request(
        self, res: _LoopResources, messages: list[dict[str, str]], scope: Scope, avoid: Endpoint | None,
        bad_output: bool,
    ) -> tuple[str, int, int, dict[str, Any]]:
        """(content, prompt_tokens, completion_tokens, sampling settings) of one completion, or
        AttemptError."""
        async with res.semaphore:
            ep = self._pool.pick(avoid)
            structured = self.params.structured_output and ep.structured_ok
            body = self._body(messages, scope, structured, bad_output)
            client = self._client(res, ep)
            ep.in_flight += 1
            ep.requests += 1
            res.in_flight += 1
            self.stats.calls += 1
            self.stats.max_in_flight = max(self.stats.max_in_flight, res.in_flight)
            t0 = time.perf_counter()
            try:
                # The client enforces timeout_s per phase; this outer bound also catches a
                # server that keeps trickling bytes.
                raw = await _with_deadline(
                    client.post("/chat/completions", body=body, cast_to=bytes), self.params.timeout_s * 2 + 1.0
                )
            except asyncio.TimeoutError:
                self._pool.mark(ep, False)
                raise AttemptError("timeout", f"no answer within {self.params.timeout_s:g}s", True, ep) from None
            except openai.APIConnectionError as e:  # APITimeoutError included
                self._pool.mark(ep, False)
                kind = transport_kind(e)
                why = f"no answer within {self.params.timeout_s:g}s" if kind == "timeout" else "connection failed"
                raise AttemptError(kind, f"{why} ({type(e.__cause__ or e).__name__})", True, ep) from None
            except openai.APIStatusError as e:
                kind, retryable = status_kind(e.status_code)
                if e.status_code in (400, 422) and structured and mentions_structured_output(e):
                    # Some servers reject response_format: fall back to prompt-only JSON there.
                    ep.structured_ok = False
                    log.warning("judge endpoint %s rejected response_format; using plain JSON prompting", ep.url)
                    raise AttemptError(kind, f"HTTP {e.status_code}", True, ep, structured_rejected=True) from None
                # 5xx, 429, 404 and 408 say something about the endpoint; other 4xx about the request.
                self._pool.mark(ep, not (e.status_code >= 500 or e.status_code in (404, 408, 429)))
                raise AttemptError(kind, f"HTTP {e.status_code}", retryable, ep, retry_after_seconds(e)) from None
            except openai.APIError as e:  # response could not be read as JSON, and similar
                self._pool.mark(ep, True)
                raise AttemptError("protocol", f"bad response: {type(e).__name__}", True, ep) from None
            except ValueError as e:  # the client's own JSON decoding
                self._pool.mark(ep, True)
                raise AttemptError("protocol", f"bad response: {type(e).__name__}", True, ep) from None
            except Exception as e:  # anything else from the HTTP stack: count it, never lose the batch
                self._pool.mark(ep, False)
                log.debug("unexpected judge client error", exc_info=True)
                raise AttemptError("client_error", f"unexpected client error: {type(e).__name__}", True, ep) from None
            finally:
                dt = time.perf_counter() - t0
                ep.in_flight -= 1
                res.in_flight -= 1
                self.stats.call_latency_s += dt
                self.stats.call_latency_max_s = max(self.stats.call_latency_max_s, dt)
        self._pool.mark(ep, True)
        try:
            data = json.loads(raw)
            content = data["choices"][0]["message"]["content"]
            if content is None:
                content = ""
            if not isinstance(content, str):
                raise TypeError("content is not a string")
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise AttemptError("protocol", f"response is not a chat completion: {type(e).__name__}", True, ep) from None
        usage = data.get("usage") or {}
        pt = int(usage.get("prompt_tokens") or 0)
        ct = int(usage.get("completion_tokens") or 0)
        self.stats.prompt_tokens += pt
        self.stats.completion_tokens += ct
        return content, pt, ct, {"temperature": body["temperature"], "structured": structured}

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        p = self.params
        cap = min(p.backoff_max_s, p.backoff_base_s * (2 ** (attempt - 1)))
        delay = cap * (0.5 + 0.5 * self._rng.random())  # "equal jitter": spread, but never ~0
        if retry_after is not None:
            delay = max(delay, min(retry_after, p.backoff_max_s))
        return delay

    # -- one group of criteria ----------------------------------------------------------------

    async def _grade_group(
        self, res: _LoopResources, item: GradingItem, idx: list[int], first_scope: Scope
    ) -> dict[int, Verdict]:
        """Verdicts for criteria `idx` of `item`, asking again for whatever is missing."""
        crit = item.criteria
        pending = list(idx)
        done: dict[int, Verdict] = {}
        last: dict[int, tuple[str, str]] = {}
        attempt = 0  # retries used
        avoid: Endpoint | None = None
        sleep_s = 0.0
        t_start = time.perf_counter()
        owed_pt = owed_ct = 0  # tokens of attempts that resolved nothing yet
        bad_output = False  # the grader answered, but unreadably: re-ask with some temperature
        while pending:
            if sleep_s > 0:
                await asyncio.sleep(sleep_s)
                sleep_s = 0.0
            if len(pending) == len(idx):
                scope = first_scope
            else:
                scope = "one" if len(pending) == 1 and self.params.mode == "per_criterion" else "some"
            subset: Sequence[Criterion] = [crit[i] for i in pending]
            messages = build_messages(item.conversation, item.response, subset, scope)
            try:
                content, pt, ct, settings = await self._request(res, messages, scope, avoid, bad_output)
            except AttemptError as e:
                self.stats.errors[e.kind] += 1
                dead = self.liveness() if self.liveness is not None else None
                if dead:
                    raise JudgeServerDied(dead) from None
                for i in pending:
                    last[i] = (e.kind, e.message)
                if e.structured_rejected:
                    continue  # same attempt again without response_format
                if not e.retryable or attempt >= self.params.max_retries:
                    break
                attempt += 1
                self.stats.retries += 1
                avoid = e.endpoint
                sleep_s = self._backoff(attempt, e.retry_after)
                log.debug("judge attempt failed (%s: %s); retry %d", e.kind, e.message, attempt)
                continue
            owed_pt += pt
            owed_ct += ct
            try:
                found, problems = self._parse(content, scope, len(subset))
            except GraderOutputError as e:
                bad_output = True
                self.stats.errors[e.kind] += 1
                for i in pending:
                    last[i] = (e.kind, str(e))
                if attempt >= self.params.max_retries:
                    break
                attempt += 1
                self.stats.retries += 1
                continue
            done.update(self._verdicts_found(found, pending, time.perf_counter() - t_start, owed_pt, owed_ct,
                                             settings))
            owed_pt = owed_ct = 0
            if problems:
                bad_output = True
                self.stats.errors["schema"] += 1
                for num, why in problems.items():
                    last[pending[num - 1]] = ("schema", why)
            pending = [i for i in pending if i not in done]
            if pending:
                if attempt >= self.params.max_retries:
                    break
                attempt += 1
                self.stats.retries += 1
        done.update(self._failed(pending, last, attempt + 1, time.perf_counter() - t_start))
        return done

    @staticmethod
    def _parse(content: str, scope: Scope, n: int) -> tuple[dict[int, tuple[bool, str]], dict[int, str]]:
        """Verdicts by criterion number (1-based), and the numbers answered unreadably."""
        if scope == "one":
            return {1: parse_single(content)}, {}
        return parse_multi(content, n)

    @staticmethod
    def _verdicts_found(found: dict[int, tuple[bool, str]], pending: list[int], elapsed: float,
                        prompt_tokens: int, completion_tokens: int, settings: Any) -> dict[int, Verdict]:
        """Verdicts of the criteria an answer covered; the tokens of the attempts that led to it
        are shared out among them (so per-verdict tokens add up to what the judge billed)."""
        nums = sorted(found)
        n = len(nums)
        out = {}
        for j, num in enumerate(nums):
            met, why = found[num]
            out[pending[num - 1]] = Verdict(
                met=met, explanation=why, source="judge", latency_s=elapsed,
                prompt_tokens=prompt_tokens // n + (1 if j < prompt_tokens % n else 0),
                completion_tokens=completion_tokens // n + (1 if j < completion_tokens % n else 0),
                settings=settings,
            )
        return out

    def _failed(self, pending: list[int], last: dict[int, tuple[str, str]], tries: int,
                elapsed: float) -> dict[int, Verdict]:
        """Failed verdicts, with the last failure kind seen, for criteria still without one."""
        out = {}
        for i in pending:
            kind, why = last.get(i, ("schema", "no verdict"))
            out[i] = Verdict.failure(kind, f"judge failed after {tries} attempt(s): {why}", latency_s=elapsed)
            self.stats.record_failure(kind)
        return out

    def _groups(self, n: int) -> list[tuple[list[int], Scope]]:
        mode = self.params.mode
        if n == 0:
            return []
        if mode == "per_criterion":
            return [([i], "one") for i in range(n)]
        k = n if mode == "all" else self.params.criteria_per_call
        return [(list(range(s, min(n, s + k))), "all" if k >= n else "some") for s in range(0, n, k)]

    async def _grade_many(self, items: list[GradingItem], on_done: ProgressFn | None) -> list[list[Verdict]]:
        res = self._resources()
        res.users += 1
        out: list[dict[int, Verdict]] = [{} for _ in items]

        async def run(k: int, idx: list[int], scope: Scope) -> None:
            try:
                out[k].update(await self._grade_group(res, items[k], idx, scope))
            except JudgeServerDied:
                raise  # not a failed verdict: nobody is left to ask
            except Exception as e:  # a bug or stray error in one group must not sink the batch
                log.warning("judge: grading criteria %s of item %d raised %s: %s; counted as failures",
                            idx, k, type(e).__name__, e, exc_info=log.isEnabledFor(logging.DEBUG))
                for i in idx:
                    out[k][i] = Verdict.failure("client_error", f"unexpected error: {type(e).__name__}: {e}")
                    self.stats.record_failure("client_error")
            if on_done is not None:
                on_done(len(idx))

        try:
            await asyncio.gather(*(
                run(k, idx, scope) for k, it in enumerate(items) for idx, scope in self._groups(len(it.criteria))
            ))
        finally:
            res.users -= 1
            if res.users == 0:
                # Close clients when the loop has no grading left, so no connection outlives
                # an `asyncio.run`; the next batch opens fresh ones (cheap next to a batch).
                await res.close()
        return [[d[i] for i in range(len(it.criteria))] for d, it in zip(out, items)]
