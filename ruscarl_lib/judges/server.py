"""A local `vllm serve` judge: started on a free loopback port, health-checked, stopped by pid.

The same OpenAI-compatible server a GPU user starts by hand (`vllm serve Qwen/Qwen3-32B`), as a
component: `JudgeServer(params.judge.server, log_path).start()` (or `with JudgeServer(...)`),
`ruscarl judge-server` on the command line, and `judge.server.start: true` in params, which
makes a run or an evaluation start its own judge (`served_judge`).

On CPU the executable comes from the vLLM CPU build in `.venv-vllm` (`scripts/setup_vllm_lane.sh`);
on a GPU from the `gpu` extra's vllm. The server runs in its own process group; its output
goes to a log file, whose tail is quoted in every error. A server that exits while a judge
uses it is reported through `JudgeServerDied` at the next failed request, not retried for ever.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from ruscarl_lib.models.local import resolve_model
from ruscarl_lib.common.loopback import free_loopback_port
from ruscarl_lib.params import JudgeParams, JudgeServerParams
from ruscarl_lib.common.paths import project_root


class JudgeServerError(RuntimeError):
    """The judge server could not be found, did not start, or is not answering."""


class JudgeServerDied(JudgeServerError):
    """The judge server process exited while a judge was using it."""


def find_vllm(command: str | None = None) -> str:
    """The `vllm` executable: `command`, $RUSCARL_VLLM, the project's .venv-vllm, then PATH."""
    candidates = [command, os.environ.get("RUSCARL_VLLM"), str(project_root() / ".venv-vllm" / "bin" / "vllm"),
                  shutil.which("vllm")]
    for c in candidates:
        if c and (Path(c).is_file() or shutil.which(c)) and os.access(shutil.which(c) or c, os.X_OK):
            return shutil.which(c) or c
    raise JudgeServerError(
        "no vLLM executable: on CPU run `bash scripts/setup_vllm_lane.sh` (vLLM's CPU build in .venv-vllm), "
        "on a GPU install the `gpu` extra, or set judge.server.command / RUSCARL_VLLM")


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True  # not Linux: leave it to vLLM
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _dtype(asked: str) -> str:
    """`asked`, with `auto` made float32 on a CPU-only machine whose CPU lacks bfloat16 units.

    vLLM's CPU default is bfloat16, which such a CPU computes by conversion. Measured with
    SmolLM2-135M on a 2-core AVX2 machine, both took about 7 s for a 47-token verdict, so this
    is for precision (the same float32 as the policy's HF path on CPU), not speed.
    """
    if asked != "auto":
        return asked
    if shutil.which("nvidia-smi") is None and not _cpu_has_bf16():
        return "float32"
    return "auto"


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT is no obstacle
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _die_with_parent() -> None:
    """In the child before exec (Linux): get SIGTERM when the Python that started it dies, so a
    killed notebook kernel or driver does not leave a judge server running."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _log_tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


class JudgeServer:
    """One `vllm serve` process on 127.0.0.1. `start()` returns once it answers /v1/models."""

    def __init__(self, params: JudgeServerParams | None = None, log_path: str | os.PathLike | None = None,
                 *, port: int | None = None) -> None:
        self.params = params or JudgeServerParams()
        self.log_path = Path(log_path) if log_path else Path("outputs") / "judge_server.log"
        self.port = port
        self.proc: subprocess.Popen | None = None
        self.model_path: str | None = None
        self.startup_s: float | None = None

    # -- addresses ------------------------------------------------------------------------------

    @property
    def served_model_name(self) -> str:
        return self.params.served_model_name or self.params.model

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def judge_params(self, judge: JudgeParams) -> JudgeParams:
        """`judge` pointed at this server (base_urls and model replaced), everything else kept."""
        return judge.model_copy(update={"kind": "openai", "base_urls": [self.base_url], "model": self.served_model_name})

    # -- life cycle -----------------------------------------------------------------------------

    def command(self) -> list[str]:
        p = self.params
        cmd = [find_vllm(p.command), "serve", self.model_path or p.model, "--host", "127.0.0.1", "--port", str(self.port),
               "--served-model-name", self.served_model_name, "--max-model-len", str(p.max_model_len),
               "--generation-config", "vllm"]  # sampling as the request says, not the model's defaults
        cmd += ["--dtype", _dtype(p.dtype)]
        if p.enforce_eager:
            cmd.append("--enforce-eager")
        return cmd + list(p.extra_args)

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{self.params.kv_cache_gib:g}")
        env.setdefault("VLLM_NO_USAGE_STATS", "1")
        env.setdefault("DO_NOT_TRACK", "1")
        env["HF_HUB_OFFLINE"] = env.get("HF_HUB_OFFLINE", "1" if Path(self.model_path or "").is_dir() else "0")
        if self.params.threads:
            env["OMP_NUM_THREADS"] = str(self.params.threads)
            env["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
        # the server is not this Python: drop this environment's own package path
        env.pop("PYTHONPATH", None)
        return env

    def start(self) -> "JudgeServer":
        if self.proc is not None:
            return self
        t0 = time.monotonic()
        self.model_path = resolve_model(self.params.model)
        if self.port and not _port_is_free(self.port):
            raise JudgeServerError(f"port {self.port} on 127.0.0.1 is already in use (another server?)")
        self.port = self.port or free_loopback_port()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = self.command()
        with self.log_path.open("w") as log:
            log.write("$ " + " ".join(cmd) + "\n")
            log.flush()
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=self.environment(), start_new_session=True,
                                         preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        print(f"[judge-server] starting vLLM (pid {self.proc.pid}) for {self.served_model_name} on {self.url}; "
              f"log {self.log_path}", flush=True)
        try:
            self._wait_ready(t0 + self.params.startup_timeout_s)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - t0
        print(f"[judge-server] ready in {self.startup_s:.0f} s", flush=True)
        return self

    def _wait_ready(self, deadline: float) -> None:
        while True:
            problem = self.problem()
            if problem:
                raise JudgeServerError(problem)
            try:
                with urllib.request.urlopen(self.base_url + "/models", timeout=5) as r:
                    names = [m.get("id") for m in json.loads(r.read()).get("data", [])]
                if self.served_model_name in names:
                    return
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise JudgeServerError(
                    f"vLLM did not answer on {self.url} within {self.params.startup_timeout_s:.0f} s "
                    f"(judge.server.startup_timeout_s); log {self.log_path}:\n{_log_tail(self.log_path)}")
            time.sleep(1.0)

    def problem(self) -> str | None:
        """Why the server cannot answer (it exited), or None while its process runs."""
        if self.proc is None:
            return "the judge server was not started"
        code = self.proc.poll()
        if code is None:
            return None
        return (f"the judge server (vLLM, pid {self.proc.pid}) exited with code {code}; "
                f"log {self.log_path}:\n{_log_tail(self.log_path)}")

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the server's whole process group: SIGTERM, then SIGKILL after `timeout_s`."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def metrics(self) -> dict[str, float]:
        """vLLM's Prometheus counters and gauges (`vllm:*`), each summed over its label sets."""
        return read_metrics(self.url)

    def attach(self, judge: object) -> object:
        """Make every LLM judge inside `judge` (cached, composite) stop at once if this dies."""
        seen = [judge]
        while seen:
            j = seen.pop()
            if hasattr(j, "liveness"):
                j.liveness = self.problem
            seen.extend(x for x in (getattr(j, "llm", None), getattr(j, "inner", None)) if x is not None)
        return judge

    def __enter__(self) -> "JudgeServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def read_metrics(url: str) -> dict[str, float]:
    """`vllm:*` samples of a server's /metrics, summed over labels (histogram parts by suffix)."""
    with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        try:
            out[name] = out.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return out


@contextlib.contextmanager
def served_judge(judge: JudgeParams, log_dir: str | os.PathLike) -> Iterator[tuple[JudgeParams, JudgeServer | None]]:
    """(judge params to use, server or None): starts a server when `judge.server.start`."""
    if judge.kind != "openai" or not judge.server.start:
        yield judge, None
        return
    with JudgeServer(judge.server, Path(log_dir) / "judge_server.log") as server:
        yield server.judge_params(judge), server


def main(argv: list[str] | None = None) -> int:
    """`ruscarl judge-server`: serve a judge model in the foreground until interrupted."""
    import argparse

    from ruscarl_lib.params import load_params

    ap = argparse.ArgumentParser(prog="ruscarl judge-server", description=main.__doc__)
    ap.add_argument("--params", help="params file whose judge.server section to use")
    ap.add_argument("--model", help="overrides judge.server.model (a registered name, folder or hub id)")
    ap.add_argument("--port", type=int, default=None, help="default: a free port")
    ap.add_argument("--log", default="outputs/judge_server.log")
    args = ap.parse_args(argv)
    sp = load_params(args.params).judge.server if args.params else JudgeServerParams()
    if args.model:
        sp = sp.model_copy(update={"model": args.model})
    server = JudgeServer(sp, args.log, port=args.port)

    def _terminate(signum, frame):  # `kill PID` stops the server too, not only Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    try:
        server.start()
    except JudgeServerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"base_url": server.base_url, "model": server.served_model_name, "pid": server.proc.pid}), flush=True)
    try:
        while server.problem() is None:
            time.sleep(1.0)
        print(f"error: {server.problem()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()
