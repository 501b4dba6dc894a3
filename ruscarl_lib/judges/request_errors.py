"""What a failed judge request was: its failure kind, whether it is worth retrying, and how long
the server asked us to wait. The openai exception types are classified here, for both HTTP
backends (the aiohttp client raises the same types).
"""

from __future__ import annotations

import asyncio
from typing import Any

import openai


class AttemptError(Exception):
    """One failed HTTP attempt, classified."""

    def __init__(
        self,
        kind: str,
        message: str,
        retryable: bool,
        endpoint: Any = None,  # the llm module's endpoint record
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


def error_causes(exc: BaseException) -> list[BaseException]:
    """The exception and everything it was raised from (transports wrap the real error)."""
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in out and len(out) < 10:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def transport_kind(exc: openai.APIConnectionError) -> str:
    """"timeout" or "connection": the aiohttp transport reports a dropped connection as a
    connect timeout, so look at the original error rather than the wrapper's type."""
    for e in reversed(error_causes(exc)[1:]):  # the original error first
        name = type(e).__name__
        if "Disconnected" in name or "Reset" in name or isinstance(e, (ConnectionError, BrokenPipeError)):
            return "connection"
        if "ClientConnectorError" in name or "ConnectError" == name:
            return "connection"
        if isinstance(e, (asyncio.TimeoutError, TimeoutError)) or "Timeout" in name:
            return "timeout"
    return "timeout" if isinstance(exc, openai.APITimeoutError) else "connection"


def retry_after_seconds(exc: openai.APIStatusError) -> float | None:
    try:
        value = exc.response.headers.get("retry-after")
        return max(0.0, float(value)) if value is not None else None
    except (TypeError, ValueError):
        return None


def mentions_structured_output(exc: openai.APIStatusError) -> bool:
    """Whether a rejected request was rejected for its response_format."""
    text = f"{exc.message} {exc.body}".lower()
    return any(w in text for w in ("response_format", "json_schema", "guided", "structured"))


def status_kind(status: int) -> tuple[str, bool]:
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
