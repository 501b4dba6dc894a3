"""Judge throughput against a loopback OpenAI-compatible server with a fixed latency.

Two benchmarks, each ending in one summary line:
1. throughput: grade N criteria (one request each) with concurrency C; the ideal rate is
   C / latency, since each request costs at least `latency` of server time.
2. healthbench_batch: one training step's worth of grading at HealthBench size, 64 prompts x
   8 responses x 12 criteria = 6,144 criteria, and its wall time against the ideal.

The server runs in a separate process (tests/judge_server.py) so that it does not compete with
the judge client for the GIL; `--in-process` runs it on a thread instead. Both processes' CPU
time is measured over each run (the client's with `time.process_time`, the server's from
/proc), so the client's CPU per request is reported apart from the fake server's: on a machine
with few cores the two share the CPU, and the throughput ratio alone would charge the
server's work to the client. `--reps` repeats the throughput run; the median and [min, max]
are printed.

    python benchmarks/judge_throughput.py [--latency 0.05] [--concurrency 32] [--criteria 3000] [--reps 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from ruscarl_lib.judges import GradingItem, OpenAIJudge  # noqa: E402
from ruscarl_lib.params import JudgeParams  # noqa: E402
from ruscarl_lib.data.rubric import Criterion  # noqa: E402


def proc_cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds of process `pid` so far (Linux /proc), None if unknown."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(latency: float, in_process: bool):
    """(base_url, stop, server pid or None) for a loopback judge server answering after
    `latency` seconds (pid None: in this process, its CPU cannot be told apart)."""
    if in_process:
        from judge_server import JudgeServer

        srv = JudgeServer(latency_s=latency).start()
        return srv.base_url, srv.stop, None
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "judge_server.py"), str(latency)],
        stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http://127.0.0.1:"):
        proc.kill()
        raise RuntimeError(f"judge server did not start (printed {url!r})")

    def stop() -> None:
        proc.terminate()
        proc.wait(timeout=10)

    return url, stop, proc.pid


def make_items(n_prompts: int, n_responses: int, n_criteria: int) -> list[GradingItem]:
    """Distinct prompts, responses and criteria; about half the criteria are met."""
    items = []
    for p in range(n_prompts):
        conv = [{"role": "user", "content": f"Patient question {p}: I have had symptom {p} for {p % 9 + 1} days."}]
        crits = [Criterion(f"Response for prompt {p} mentions [[topic{c}]] clearly.", (c % 5) + 1 if c % 4 else -3)
                 for c in range(n_criteria)]
        for r in range(n_responses):
            text = " ".join(f"topic{c}" for c in range(n_criteria) if (c + r) % 2 == 0)
            items.append(GradingItem(conv, f"Answer {r} to prompt {p}: {text}.", crits))
    return items


async def run(judge: OpenAIJudge, items: list[GradingItem], progress: bool) -> float:
    t0 = time.perf_counter()
    try:
        out = await judge.grade_many(items, progress="grading" if progress else False)
    finally:
        await judge.aclose()
    failed = sum(v.failed for vs in out for v in vs)
    if failed:
        raise RuntimeError(f"{failed} criteria failed: {judge.stats.failures}")
    return time.perf_counter() - t0


def measured(judge: OpenAIJudge, items: list[GradingItem], progress: bool, server_pid: int | None) -> dict:
    """Wall time and both processes' CPU seconds of grading `items`."""
    s0, c0 = proc_cpu_s(server_pid), time.process_time()
    wall = asyncio.run(run(judge, items, progress))
    c1, s1 = time.process_time(), proc_cpu_s(server_pid)
    return {"wall": wall, "client_cpu": c1 - c0, "server_cpu": None if s0 is None or s1 is None else s1 - s0,
            "calls": judge.stats.calls}


def _spread(values: list[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} [{min(values):{fmt}}, {max(values):{fmt}}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency", type=float, default=0.05, help="server seconds per request")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--criteria", type=int, default=3000, help="criteria in the throughput run")
    ap.add_argument("--mode", default="per_criterion", choices=["per_criterion", "batched", "all"])
    ap.add_argument("--backend", default="auto", choices=["auto", "httpx", "aiohttp"], help="HTTP transport: aiohttp (direct) or httpx (the openai client)")
    ap.add_argument("--in-process", action="store_true", help="serve from a thread of this process")
    ap.add_argument("--progress", action="store_true", help="show tqdm bars")
    ap.add_argument("--reps", type=int, default=3, help="repetitions of the throughput run")
    args = ap.parse_args()

    url, stop, server_pid = start_server(args.latency, args.in_process)
    try:
        params = JudgeParams(kind="openai", base_urls=[url], mode=args.mode, max_concurrency=args.concurrency,
                             cache_path=None, timeout_s=30.0, model="bench-judge",
                             http_backend=args.backend)
        # warm-up: imports, first connections
        asyncio.run(run(OpenAIJudge(params), make_items(1, 2, 8), False))

        items = make_items(max(1, args.criteria // 120), 10, 12)
        n = sum(len(it.criteria) for it in items)
        fracs, client_us, server_us = [], [], []
        for rep in range(args.reps):
            judge = OpenAIJudge(params)
            m = measured(judge, items, args.progress, server_pid)
            calls = m["calls"]
            rate = n / m["wall"]
            ideal = args.concurrency / args.latency * (n / calls)
            fracs.append(rate / ideal)
            client_us.append(m["client_cpu"] / calls * 1e6)
            if m["server_cpu"] is not None:
                server_us.append(m["server_cpu"] / calls * 1e6)
            print(f"  throughput run {rep + 1}: {n} criteria, {calls} requests, {m['wall']:.2f}s, peak in flight "
                  f"{judge.stats.max_in_flight}, mean request latency "
                  f"{judge.stats.call_latency_s / max(1, calls) * 1000:.1f}ms; {rate:.1f} criteria/s vs ideal "
                  f"{ideal:.1f} ({rate / ideal:.1%}); CPU per request: client {client_us[-1]:.0f}us, server "
                  f"{f'{server_us[-1]:.0f}us' if server_us else 'n/a (in process)'}", flush=True)
        ideal_rps = args.concurrency / args.latency
        # at the ideal request rate, the share of one core the client's own work needs
        client_core = statistics.median(client_us) * 1e-6 * ideal_rps

        items = make_items(64, 8, 12)
        n = sum(len(it.criteria) for it in items)
        judge = OpenAIJudge(params)
        hb = measured(judge, items, args.progress, server_pid)
        wall = hb["wall"]
        calls = judge.stats.calls
        ideal_wall = calls / ideal_rps
        print(f"  healthbench batch: {calls} requests, {judge.stats.prompt_tokens} prompt tokens, "
              f"{judge.stats.retries} retries, client CPU {hb['client_cpu']:.2f}s"
              + (f", server CPU {hb['server_cpu']:.2f}s" if hb["server_cpu"] is not None else ""), flush=True)
        server = f"server {_spread(server_us, '.0f')}us" if server_us else "server n/a (in process)"
        # the one summary line
        print(f"judge_throughput: mode={args.mode} C={args.concurrency} latency={args.latency * 1000:.0f}ms "
              f"backend={OpenAIJudge(params)._backend()}: throughput {_spread([f * 100 for f in fracs], '.1f')}% "
              f"of ideal ({ideal_rps:.0f} requests/s; median [min, max] of {args.reps} runs); CPU per request: "
              f"client {_spread(client_us, '.0f')}us (at the ideal rate {client_core:.0%} of one core), {server}; "
              f"HealthBench-sized batch 64x8x12 = {n} criteria in {wall:.2f}s (ideal {ideal_wall:.2f}s, "
              f"{ideal_wall / wall:.1%}); {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}",
              flush=True)
    finally:
        stop()


if __name__ == "__main__":
    main()
