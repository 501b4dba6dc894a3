"""Judge throughput against a loopback OpenAI-compatible server with a fixed latency.

Two benchmarks, each ending in one summary line:
1. throughput: grade N criteria (one request each) with concurrency C; the ideal rate is
   C / latency, since each request costs at least `latency` of server time.
2. healthbench_batch: one training step's worth of grading at HealthBench size, 64 prompts x
   8 responses x 12 criteria = 6,144 criteria, and its wall time against the ideal.

The server runs in a separate process (tests/judge_server.py) so that it does not compete with
the judge client for the GIL; `--in-process` runs it on a thread instead.

    python benchmarks/judge_throughput.py [--latency 0.05] [--concurrency 32] [--criteria 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from ruscarl_lib.judges import GradingItem, OpenAIJudge  # noqa: E402
from ruscarl_lib.params import JudgeParams  # noqa: E402
from ruscarl_lib.rubric import Criterion  # noqa: E402


def start_server(latency: float, in_process: bool):
    """(base_url, stop) for a loopback judge server answering after `latency` seconds."""
    if in_process:
        from judge_server import JudgeServer

        srv = JudgeServer(latency_s=latency).start()
        return srv.base_url, srv.stop
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

    return url, stop


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency", type=float, default=0.05, help="server seconds per request")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--criteria", type=int, default=3000, help="criteria in the throughput run")
    ap.add_argument("--mode", default="per_criterion", choices=["per_criterion", "batched", "all"])
    ap.add_argument("--backend", default="auto", choices=["auto", "httpx", "aiohttp"], help="openai client transport")
    ap.add_argument("--in-process", action="store_true", help="serve from a thread of this process")
    ap.add_argument("--progress", action="store_true", help="show tqdm bars")
    args = ap.parse_args()

    url, stop = start_server(args.latency, args.in_process)
    try:
        params = JudgeParams(kind="openai", base_urls=[url], mode=args.mode, max_concurrency=args.concurrency,
                             cache_path=None, timeout_s=30.0, model="bench-judge",
                             http_backend=args.backend)
        # warm-up: imports, first connections
        asyncio.run(run(OpenAIJudge(params), make_items(1, 2, 8), False))

        items = make_items(max(1, args.criteria // 120), 10, 12)
        n = sum(len(it.criteria) for it in items)
        judge = OpenAIJudge(params)
        wall = asyncio.run(run(judge, items, args.progress))
        rate = n / wall
        calls = judge.stats.calls
        ideal = args.concurrency / args.latency * (n / calls)
        print(f"  throughput run: {n} criteria, {calls} requests, {wall:.2f}s, peak in flight "
              f"{judge.stats.max_in_flight}, mean request latency "
              f"{judge.stats.call_latency_s / max(1, calls) * 1000:.1f}ms", flush=True)
        print(f"  throughput: {rate:.1f} criteria/s vs ideal {ideal:.1f} ({rate / ideal:.1%})", flush=True)

        items = make_items(64, 8, 12)
        n = sum(len(it.criteria) for it in items)
        judge = OpenAIJudge(params)
        wall = asyncio.run(run(judge, items, args.progress))
        calls = judge.stats.calls
        ideal_wall = calls / (args.concurrency / args.latency)
        print(f"  healthbench batch: {calls} requests, {judge.stats.prompt_tokens} prompt tokens, "
              f"{judge.stats.retries} retries", flush=True)
        # the one summary line
        print(f"judge_throughput: mode={args.mode} C={args.concurrency} latency={args.latency * 1000:.0f}ms: "
              f"{rate:.1f} criteria/s vs ideal {ideal:.1f} ({rate / ideal:.1%}); HealthBench-sized batch "
              f"64x8x12 = {n} criteria in {wall:.2f}s (ideal {ideal_wall:.2f}s, {ideal_wall / wall:.1%})",
              flush=True)
    finally:
        stop()


if __name__ == "__main__":
    main()
