"""An LLM judge over any OpenAI-compatible chat endpoint (vLLM, OpenAI, others).

Why it looks the way it does:
- Training grades thousands of criteria per step (METHOD.md section 6: ~5,900 calls), so
  requests run concurrently under one semaphore per event loop, spread over several base URLs
  (least-loaded first, an endpoint that keeps failing is skipped for a cool-down).
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
  builds pydantic models). Both raise the openai exception types, classified below.
- HTTP clients belong to one event loop: they are opened per loop (TRL grades on its own
  loop thread; tests use asyncio.run) and closed when that loop has no grading left.
- The API key is read from the environment variable named in params, handed to the client and
  never stored on the judge, logged, or placed in any message we produce.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import logging
import math
import os
import random
import sys
import time
import urllib.parse
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import openai

from ..params import JudgeParams
from ..rubric import Criterion
from .http import AioHttpChatClient
from .server import JudgeServerDied
from .prompts import PROMPT_VERSION, GraderOutputError, Scope, build_messages, parse_multi, parse_single, response_format
from .verdict import GradingItem, Judge, JudgeStats, ProgressFn, Verdict

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


class JudgeConfigError(ValueError):
    """The judge cannot be set up (for example the named API-key variable is unset)."""


def is_loopback_url(url: str) -> bool:
    """Whether `url` points at this machine (localhost, 127.0.0.0/8, ::1)."""
    host = (urllib.parse.urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_api_key(api_key_env: str | None, base_urls: Sequence[str] = ()) -> str:
    """The API key from the named environment variable; "EMPTY" when no variable is named, or
    when it is unset and every endpoint is a loopback address (a local vLLM needs no key, as
    the params files promise). A remote endpoint with the variable unset is an error."""
    if not api_key_env:
        return "EMPTY"
    value = os.environ.get(api_key_env)
    if value:
        return value
    if base_urls and all(is_loopback_url(u) for u in base_urls):
        return "EMPTY"
    remote = [u for u in base_urls if not is_loopback_url(u)]
    raise JudgeConfigError(
        f"judge.api_key_env names {api_key_env!r} but that environment variable is not set"
        + (f" (needed for the non-local endpoint(s) {remote})" if remote else "")
    )


@dataclass
class _Endpoint:
    """Load and health of one base URL (shared by every event loop using the judge)."""

    url: str
    in_flight: int = 0
    consecutive_failures: int = 0
    cooldown_until: float = 0.0
    structured_ok: bool = True
    requests: int = 0


class _AttemptError(Exception):
    """One failed HTTP attempt, classified."""

    def __init__(
        self,
        kind: str,
        message: str,
        retryable: bool,
        endpoint: _Endpoint | None = None,
        retry_after: float | None = None,
        structured_rejected: bool = False,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retryable = retryable
        self.endpoint = endpoint
        self.retry_after = retry_after
        self.structured_rejected = structured_rejected


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


def _causes(exc: BaseException) -> list[BaseException]:
    """The exception and everything it was raised from (transports wrap the real error)."""
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in out and len(out) < 10:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def _transport_kind(exc: openai.APIConnectionError) -> str:
    """"timeout" or "connection": the aiohttp transport reports a dropped connection as a
    connect timeout, so look at the original error rather than the wrapper's type."""
    for e in reversed(_causes(exc)[1:]):  # the original error first
        name = type(e).__name__
        if "Disconnected" in name or "Reset" in name or isinstance(e, (ConnectionError, BrokenPipeError)):
            return "connection"
        if "ClientConnectorError" in name or "ConnectError" == name:
            return "connection"
        if isinstance(e, (asyncio.TimeoutError, TimeoutError)) or "Timeout" in name:
            return "timeout"
    return "timeout" if isinstance(exc, openai.APITimeoutError) else "connection"


def _retry_after(exc: openai.APIStatusError) -> float | None:
    try:
        value = exc.response.headers.get("retry-after")
        return max(0.0, float(value)) if value is not None else None
    except (TypeError, ValueError):
        return None


def _mentions_structured(exc: openai.APIStatusError) -> bool:
    """Whether a rejected request was rejected for its response_format."""
    text = f"{exc.message} {exc.body}".lower()
    return any(w in text for w in ("response_format", "json_schema", "guided", "structured"))


def _status_kind(status: int) -> tuple[str, bool]:
    """Failure kind and whether to retry, for an HTTP error status."""
    if status == 429:
        return "http_429", True
    if status >= 500:
        return "http_5xx", True
    if status in (408,):
        return "timeout", True
    if status in (404, 409, 425):  # wrong route on one endpoint, or transient conflicts
        return "http_4xx", True
    return "http_4xx", False


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
        self._endpoints = [_Endpoint(url.rstrip("/")) for url in params.base_urls]
        self._rr = 0
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
                "structured": bool(p.structured_output and all(e.structured_ok for e in self._endpoints))}

    @property
    def endpoints(self) -> list[dict[str, Any]]:
        """Health of each base URL (for diagnostics)."""
        now = time.monotonic()
        return [
            {
                "url": e.url,
                "in_flight": e.in_flight,
                "requests": e.requests,
                "consecutive_failures": e.consecutive_failures,
                "cooling_down_s": max(0.0, e.cooldown_until - now),
                "structured_output": e.structured_ok,
            }
            for e in self._endpoints
        ]

    # -- resources per event loop -----------------------------------------------------------

    def _resources(self) -> _LoopResources:
        loop = asyncio.get_running_loop()
        res = self._loops.get(loop)
        if res is None:
            res = _LoopResources(self.params.max_concurrency)
            self._loops[loop] = res
        return res

    def _client(self, res: _LoopResources, ep: _Endpoint) -> Any:
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

    # -- endpoint choice --------------------------------------------------------------------

    def _pick(self, avoid: _Endpoint | None) -> _Endpoint:
        """Least-loaded healthy endpoint, ties broken round-robin; `avoid` only as last resort."""
        now = time.monotonic()
        eps = self._endpoints
        healthy = [e for e in eps if e.cooldown_until <= now] or [min(eps, key=lambda e: e.cooldown_until)]
        if avoid is not None and len(healthy) > 1:
            healthy = [e for e in healthy if e is not avoid]
        self._rr += 1
        if self.params.routing == "round_robin":
            return healthy[self._rr % len(healthy)]
        n = len(healthy)
        return min((healthy[(self._rr + i) % n] for i in range(n)), key=lambda e: e.in_flight)

    def _mark(self, ep: _Endpoint, ok: bool) -> None:
        if ok:
            ep.consecutive_failures = 0
            return
        ep.consecutive_failures += 1
        if ep.consecutive_failures >= self.params.endpoint_failures_before_cooldown and ep.cooldown_until <= time.monotonic():
            ep.cooldown_until = time.monotonic() + self.params.endpoint_cooldown_s
            log.warning(
                "judge endpoint %s failed %d times in a row; skipping it for %.0fs",
                ep.url, ep.consecutive_failures, self.params.endpoint_cooldown_s,
            )

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
        self, res: _LoopResources, messages: list[dict[str, str]], scope: Scope, avoid: _Endpoint | None,
        bad_output: bool,
    ) -> tuple[str, int, int, dict[str, Any]]:
        """(content, prompt_tokens, completion_tokens, sampling settings) of one completion, or
        _AttemptError."""
        async with res.semaphore:
            ep = self._pick(avoid)
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
                self._mark(ep, False)
                raise _AttemptError("timeout", f"no answer within {self.params.timeout_s:g}s", True, ep) from None
            except openai.APIConnectionError as e:  # APITimeoutError included
                self._mark(ep, False)
                kind = _transport_kind(e)
                why = f"no answer within {self.params.timeout_s:g}s" if kind == "timeout" else "connection failed"
                raise _AttemptError(kind, f"{why} ({type(e.__cause__ or e).__name__})", True, ep) from None
            except openai.APIStatusError as e:
                kind, retryable = _status_kind(e.status_code)
                if e.status_code in (400, 422) and structured and _mentions_structured(e):
                    # Some servers reject response_format: fall back to prompt-only JSON there.
                    ep.structured_ok = False
                    log.warning("judge endpoint %s rejected response_format; using plain JSON prompting", ep.url)
                    raise _AttemptError(kind, f"HTTP {e.status_code}", True, ep, structured_rejected=True) from None
                # 5xx, 429, 404 and 408 say something about the endpoint; other 4xx about the request.
                self._mark(ep, not (e.status_code >= 500 or e.status_code in (404, 408, 429)))
                raise _AttemptError(kind, f"HTTP {e.status_code}", retryable, ep, _retry_after(e)) from None
            except openai.APIError as e:  # response could not be read as JSON, and similar
                self._mark(ep, True)
                raise _AttemptError("protocol", f"bad response: {type(e).__name__}", True, ep) from None
            except ValueError as e:  # the client's own JSON decoding
                self._mark(ep, True)
                raise _AttemptError("protocol", f"bad response: {type(e).__name__}", True, ep) from None
            except Exception as e:  # anything else from the HTTP stack: count it, never lose the batch
                self._mark(ep, False)
                log.debug("unexpected judge client error", exc_info=True)
                raise _AttemptError("client_error", f"unexpected client error: {type(e).__name__}", True, ep) from None
            finally:
                dt = time.perf_counter() - t0
                ep.in_flight -= 1
                res.in_flight -= 1
                self.stats.call_latency_s += dt
                self.stats.call_latency_max_s = max(self.stats.call_latency_max_s, dt)
        self._mark(ep, True)
        try:
            data = json.loads(raw)
            content = data["choices"][0]["message"]["content"]
            if content is None:
                content = ""
            if not isinstance(content, str):
                raise TypeError("content is not a string")
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise _AttemptError("protocol", f"response is not a chat completion: {type(e).__name__}", True, ep) from None
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
        avoid: _Endpoint | None = None
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
            except _AttemptError as e:
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
                if scope == "one":
                    found = {1: parse_single(content)}
                    problems: dict[int, str] = {}
                else:
                    found, problems = parse_multi(content, len(subset))
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
            now = time.perf_counter() - t_start
            nums = sorted(found)
            n_res = len(nums)
            for j, num in enumerate(nums):
                i = pending[num - 1]
                met, why = found[num]
                share_pt = owed_pt // n_res + (1 if j < owed_pt % n_res else 0)
                share_ct = owed_ct // n_res + (1 if j < owed_ct % n_res else 0)
                done[i] = Verdict(met=met, explanation=why, source="judge", latency_s=now,
                                  prompt_tokens=share_pt, completion_tokens=share_ct, settings=settings)
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
        now = time.perf_counter() - t_start
        for i in pending:
            kind, why = last.get(i, ("schema", "no verdict"))
            tries = attempt + 1
            done[i] = Verdict.failure(kind, f"judge failed after {tries} attempt(s): {why}", latency_s=now)
            self.stats.record_failure(kind)
        return done

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
