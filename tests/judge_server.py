"""A scripted OpenAI-compatible chat server on loopback, for judge tests and benchmarks.

Not a test file. `JudgeServer().start()` serves POST /v1/chat/completions on 127.0.0.1 at a
free port from a background thread (stdlib ThreadingHTTPServer, HTTP/1.1 keep-alive).

Verdicts are deterministic: a criterion is met iff every `[[word]]` marker in its text occurs
in the graded reply (case-insensitive); a criterion without markers is not met. The server
reads criteria and reply back from the prompt layout of `ruscarl_lib.judges.prompts`.

Faults, for robustness tests:
- `{{fail:KIND:N}}` in a criterion's text makes the first N requests that carry that
  criterion fail with KIND (N = `*` for always). KIND is one of FAULTS.
- `server.fault_queue`: faults applied, in order, to the next requests whatever they carry.
- `server.latency_s`: fixed delay before every answer (the benchmark's model time).
It records the request count, the peak number of requests in flight, headers and bodies.
"""

from __future__ import annotations

import collections
import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAULTS = (
    "500",  # HTTP 500
    "503",  # HTTP 503
    "429",  # HTTP 429 with Retry-After: 0
    "400",  # HTTP 400 (non-retryable)
    "slow",  # answer correctly after `slow_s`
    "hang",  # hold the request for `hang_s` (longer than the client timeout), then drop it
    "drop",  # close the connection without answering
    "badbody",  # HTTP 200 whose body is not JSON
    "badjson",  # a completion whose content is not JSON
    "schema",  # a completion whose content is JSON of the wrong shape
    "missing",  # multi-criterion answer that leaves this criterion out
    "think",  # answer wrapped after a <think> block whose text looks like a verdict
    "no_structured",  # HTTP 400 if the request asks for response_format (once per N)
)

_MARKER = re.compile(r"\[\[(.+?)\]\]")
_FAULT = re.compile(r"\{\{fail:([a-z0-9_]+):(\d+|\*)\}\}")
_REPLY = re.compile(r"<reply>\n(.*?)\n</reply>", re.DOTALL)
_CRIT = re.compile(r'<criterion (?:number="(\d+)" )?points="([^"]+)">\n(.*?)\n</criterion>', re.DOTALL)
MAX_BODY = 8 * 1024 * 1024


def decide(criterion: str, reply: str) -> bool:
    """The scripted verdict: all [[markers]] of the criterion appear in the reply."""
    words = _MARKER.findall(criterion)
    return bool(words) and all(w.lower() in reply.lower() for w in words)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without NODELAY, Nagle plus delayed ACKs
        # would add ~40 ms to every keep-alive response.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        if self.path.rstrip("/").endswith("/models"):
            self._send(200, {"object": "list", "data": [{"id": self.server.owner.model, "object": "model"}]})
        else:
            self._send(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:
        owner = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._send(413, {"error": {"message": "too large"}})
            return
        raw = self.rfile.read(length)
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._send(404, {"error": {"message": f"no route {self.path}"}})
            return
        with owner.lock:
            owner.requests += 1
            owner.in_flight += 1
            owner.max_in_flight = max(owner.max_in_flight, owner.in_flight)
            owner.headers.append({k.lower(): v for k, v in self.headers.items()})
        try:
            self._answer(raw)
        finally:
            with owner.lock:
                owner.in_flight -= 1

    # -- helpers ------------------------------------------------------------------------------

    def _send(self, status: int, payload: Any, extra_headers: dict[str, str] | None = None) -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra_headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _answer(self, raw: bytes) -> None:
        owner = self.server.owner
        try:
            req = json.loads(raw)
            prompt = req["messages"][-1]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            self._send(400, {"error": {"message": "bad request"}})
            return
        with owner.lock:
            owner.bodies.append(req)
        reply_m = _REPLY.search(prompt)
        reply = reply_m.group(1) if reply_m else ""
        crits = _CRIT.findall(prompt)
        numbered = any(num for num, _, _ in crits)
        scripted = owner.faults_for([text for _, _, text in crits])
        faults = [kind for kind, _ in scripted]
        omit = {text for kind, text in scripted if kind == "missing"}
        if owner.latency_s:
            time.sleep(owner.latency_s)
        structured = "response_format" in req
        for kind in faults:
            if kind == "slow":
                time.sleep(owner.slow_s)
            elif kind == "hang":
                time.sleep(owner.hang_s)
                self._drop()
                return
            elif kind == "drop":
                self._drop()
                return
            elif kind in ("500", "503", "400"):
                self._send(int(kind), {"error": {"message": f"scripted {kind}", "type": "server_error"}})
                return
            elif kind == "429":
                self._send(429, {"error": {"message": "slow down", "type": "rate_limit"}}, {"Retry-After": "0"})
                return
            elif kind == "no_structured" and structured:
                self._send(400, {"error": {"message": "response_format is not supported"}})
                return
            elif kind == "badbody":
                self._send(200, b"<html>oops</html>")
                return
        results = []
        for i, (num, _points, text) in enumerate(crits, 1):
            if text in omit:
                continue
            met = decide(text, reply)
            results.append({"criterion": int(num or i), "explanation": f"scripted: {'met' if met else 'not met'}", "criteria_met": met})
        if "badjson" in faults:
            content = "I think the answer is yes, probably"
        elif "schema" in faults:
            content = json.dumps({"verdict": "yes"})
        elif numbered:
            content = json.dumps({"results": results})
        else:
            r = results[0] if results else {"explanation": "", "criteria_met": False}
            content = json.dumps({"explanation": r["explanation"], "criteria_met": r["criteria_met"]})
        if "think" in faults:
            content = '<think>Maybe {"criteria_met": ' + ("false" if '"criteria_met": true' in content else "true") + "} hmm</think>\n" + content
        usage = {"prompt_tokens": len(prompt) // 4, "completion_tokens": len(content) // 4}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        with owner.lock:
            owner.completions += 1
        self._send(200, {
            "id": f"chatcmpl-{owner.requests}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": req.get("model", owner.model),
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
            "usage": usage,
        })


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256
    owner: "JudgeServer"


class JudgeServer:
    """Owns the HTTP server thread and the scripted state (thread-safe)."""

    def __init__(self, latency_s: float = 0.0, slow_s: float = 0.3, hang_s: float = 3.0, model: str = "judge-test",
                 port: int = 0) -> None:
        self.port = port
        self.latency_s = latency_s
        self.slow_s = slow_s
        self.hang_s = hang_s
        self.model = model
        self.lock = threading.Lock()
        self.fault_queue: collections.deque[str] = collections.deque()
        self._fault_counts: collections.Counter = collections.Counter()
        self.reset_counters()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    def reset_counters(self) -> None:
        with self.lock:
            self.requests = 0
            self.completions = 0
            self.in_flight = 0
            self.max_in_flight = 0
            self.headers: list[dict[str, str]] = []
            self.bodies: list[dict[str, Any]] = []

    def faults_for(self, criteria: list[str]) -> list[tuple[str, str | None]]:
        """(fault, criterion text or None) to apply to a request carrying these criteria.

        Consumes the queue and the per-criterion budgets.
        """
        out: list[tuple[str, str | None]] = []
        with self.lock:
            if self.fault_queue:
                out.append((self.fault_queue.popleft(), None))
            for text in criteria:
                for kind, n in _FAULT.findall(text):
                    key = (kind, text)
                    if n == "*" or self._fault_counts[key] < int(n):
                        self._fault_counts[key] += 1
                        out.append((kind, text))
        return out

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def start(self) -> "JudgeServer":
        self._httpd = _Server(("127.0.0.1", self.port), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "JudgeServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def dead_url() -> str:
    """A loopback base URL where nothing listens (connection refused)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/v1"


if __name__ == "__main__":  # manual use: python tests/judge_server.py [latency_s]
    import sys

    srv = JudgeServer(latency_s=float(sys.argv[1]) if len(sys.argv) > 1 else 0.0).start()
    print(srv.base_url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        srv.stop()
