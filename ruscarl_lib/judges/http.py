"""A lean aiohttp client for the judge's chat-completion requests.

Why: at high concurrency the judge client is CPU bound, and profiling the openai client on its
aiohttp transport showed most of the client's CPU per request going to request machinery
rather than to the HTTP exchange: pydantic request options and a deep copy of the body, URL
parsing and header merging for every request, and the httpx-to-aiohttp adapter in between.
This client sends the same request (POST `{base_url}/chat/completions`, bearer auth, a JSON
body) straight through one `aiohttp.ClientSession` whose URL and headers are built once, and
raises the openai exception types (`APIStatusError`, `APIConnectionError`, `APITimeoutError`)
with the original aiohttp error as their cause, so `llm.py` classifies faults the same way
whichever transport is in use. It implements only what the judge calls: `post` and `close`.
"""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import openai


class AioHttpChatClient:
    """`post("/chat/completions", body=..., cast_to=bytes)` -> raw response bytes.

    Must be created on the event loop it is used from (its session belongs to that loop).
    `timeout_s` bounds connecting and each wait for data, like the openai client's timeout.
    """

    def __init__(self, base_url: str, api_key: str, timeout_s: float) -> None:
        import aiohttp

        self._aiohttp = aiohttp
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        # The concurrency bound is the judge's semaphore; the connector must not add its own.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout_s, sock_read=timeout_s),
        )

    async def post(self, path: str, *, body: dict[str, Any], cast_to: type = bytes) -> bytes:
        if path != "/chat/completions" or cast_to is not bytes:
            raise ValueError("AioHttpChatClient only posts /chat/completions and returns bytes")
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        aiohttp = self._aiohttp
        try:
            async with self._session.post(self._url, data=data, headers=self._headers) as resp:
                raw = await resp.read()
                if resp.status >= 400:
                    raise _status_error(self._url, resp.status, resp.headers, raw)
                return raw
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError) as e:
            raise openai.APITimeoutError(request=_request(self._url)) from e
        except aiohttp.ClientError as e:
            raise openai.APIConnectionError(request=_request(self._url)) from e

    async def close(self) -> None:
        await self._session.close()


def _request(url: str) -> Any:
    # The openai exceptions only keep the request for the caller to look at; the judge never
    # does, so a light stand-in saves building an httpx request on every failure.
    return SimpleNamespace(method="POST", url=url)


def _status_error(url: str, status: int, headers: Any, raw: bytes) -> openai.APIStatusError:
    """The openai client's error for an HTTP error status (message and body built the same way)."""
    try:
        body: Any = json.loads(raw)
    except ValueError:
        body = raw.decode("utf-8", "replace")
    data = body.get("error", body) if isinstance(body, dict) else body
    response = SimpleNamespace(status_code=status, headers=headers, request=_request(url))
    return openai.APIStatusError(f"Error code: {status} - {body}", response=response, body=data)  # type: ignore[arg-type]
