"""Where an LLM judge's API key comes from: the environment variable named in params, never the
params themselves. A judge on a loopback URL (a local `vllm serve`) needs none.
"""

from __future__ import annotations

import ipaddress
import os
import urllib.parse
from typing import Sequence


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
