"""Which judge endpoint gets the next request: load, health and cool-down per base URL.

Why: a training step sends thousands of grading requests, often to several judge servers.
Sending each to the least-loaded healthy one keeps them evenly busy, and an endpoint that
keeps failing is skipped for a cool-down instead of eating retries. The state is shared by
every event loop that uses one judge (TRL grades on its own loop thread).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from ruscarl_lib.params import JudgeParams

log = logging.getLogger(__name__)


@dataclass
class Endpoint:
    """Load and health of one base URL."""

    url: str
    in_flight: int = 0
    consecutive_failures: int = 0
    cooldown_until: float = 0.0
    structured_ok: bool = True  # False once it rejected structured output
    requests: int = 0


class EndpointPool:
    """The judge's base URLs with the routing rule of `judge.routing` and the cool-down rule."""

    def __init__(self, params: JudgeParams) -> None:
        self.params = params
        self.endpoints = [Endpoint(url.rstrip("/")) for url in params.base_urls]
        self._turn = 0  # breaks ties round-robin

    def pick(self, avoid: Endpoint | None) -> Endpoint:
        """Least-loaded healthy endpoint, ties broken round-robin; `avoid` only as last resort."""
        now = time.monotonic()
        eps = self.endpoints
        healthy = [e for e in eps if e.cooldown_until <= now] or [min(eps, key=lambda e: e.cooldown_until)]
        if avoid is not None and len(healthy) > 1:
            healthy = [e for e in healthy if e is not avoid]
        self._turn += 1
        if self.params.routing == "round_robin":
            return healthy[self._turn % len(healthy)]
        n = len(healthy)
        return min((healthy[(self._turn + i) % n] for i in range(n)), key=lambda e: e.in_flight)

    def mark(self, ep: Endpoint, ok: bool) -> None:
        """Count a request's outcome; enough failures in a row start the endpoint's cool-down."""
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

    def all_structured_ok(self) -> bool:
        return all(e.structured_ok for e in self.endpoints)

    def health(self) -> list[dict[str, Any]]:
        """Per base URL: load, failures, cool-down left, whether structured output works."""
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
            for e in self.endpoints
        ]
