"""Loopback ports for the servers the project starts itself.

Why: the judge server, distributed launchers (MASTER_PORT) and the tests' own servers all bind
127.0.0.1 only, on a port the OS says is free; one helper keeps them from each growing a copy.
"""

from __future__ import annotations

import socket

__all__ = ["free_loopback_port"]


def free_loopback_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago (for a server or a launcher to bind)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
