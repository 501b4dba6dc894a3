"""The judge client against a real `vllm serve` (the CPU build in .venv-vllm, or any server).

Two measurements, each printing one summary line:

- `throughput`: the same grading requests, first fired by a bare async client (aiohttp, the
  exact request bodies the judge sends, same concurrency: what the server itself sustains),
  then graded by the judge client (OpenAIJudge with parsing, retries and accounting). The ratio
  of the two request rates is the client's share of the loss. A warm-up pass fills vLLM's
  prefix cache first, and the bare passes run before and after the judge's (their mean is
  the reference), so no pass gets a cache the other lacked. Greedy decoding (temperature 0)
  gives every pass the same tokens.
- `agreement`: the same responses graded per criterion, in batches of k per call, and all in
  one call; met rates per mode, Cohen's kappa per pair of modes (on the criteria both graded),
  and failure counts by kind.

    python benchmarks/real_judge.py throughput [--url URL] [--criteria 24] [--concurrency 8]
    python benchmarks/real_judge.py agreement  [--url URL] [--examples 4] [--k 3]

Without --url a server is started from params/healthbench_cpu.yaml's judge.server section
(SmolLM2-135M-Instruct; start-up about 60 s on 2 cores, not counted).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ruscarl_lib.data.read import load_sample_dataset  # noqa: E402
from ruscarl_lib.judges import GradingItem, OpenAIJudge  # noqa: E402
from ruscarl_lib.judges.prompts import build_messages  # noqa: E402
from ruscarl_lib.params import JudgeParams, load_params  # noqa: E402

PARAMS = ROOT / "params" / "healthbench_cpu.yaml"
#: Two answers per prompt: one on topic, one that dodges, so criteria are met and unmet.
ANSWERS = ("Please see a doctor soon; if it gets worse or you feel faint, call emergency services now.",
           "I cannot give medical advice. Try searching online.")


@contextlib.contextmanager
def judge_url(url: str | None):
    if url:
        yield url.rstrip("/"), None
        return
    from ruscarl_lib.judges.server import JudgeServer

    with JudgeServer(load_params(PARAMS).judge.server, ROOT / "outputs" / "bench" / "real_judge_server.log") as s:
        yield s.base_url, s


def judge_params(base_url: str, **kw) -> JudgeParams:
    base = load_params(PARAMS).judge.model_dump()
    base.update(kind="openai", base_urls=[base_url], cache_path=None, server={"start": False})
    base.update(kw)
    return JudgeParams(**base)


def grading_items(n_examples: int) -> list[GradingItem]:
    return [GradingItem(ex.messages, answer, ex.rubric) for ex in load_sample_dataset(n_examples) for answer in ANSWERS]


async def _grade(judge: OpenAIJudge, items: list[GradingItem]):
    try:
        return await judge.grade_many(items)
    finally:
        await judge.aclose()


def bare_pass(base_url: str, bodies: list[dict], concurrency: int) -> tuple[float, int]:
    """(seconds, answered) for firing `bodies` with at most `concurrency` in flight."""
    import aiohttp

    async def run() -> tuple[float, int]:
        sem = asyncio.Semaphore(concurrency)
        ok = 0
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
            async def one(body):
                nonlocal ok
                async with sem, session.post(base_url + "/chat/completions", json=body) as r:
                    await r.read()
                    ok += r.status == 200
            t0 = time.perf_counter()
            await asyncio.gather(*(one(b) for b in bodies))
            return time.perf_counter() - t0, ok

    return asyncio.run(run())


def throughput(args) -> str:
    with judge_url(args.url) as (base_url, _):
        params = judge_params(base_url, max_concurrency=args.concurrency, max_retries=0)
        items = grading_items(max(1, args.criteria // 8))
        # one request per criterion, exactly as the judge builds it
        pairs = [(it, c) for it in items for c in it.criteria][: args.criteria]
        judge = OpenAIJudge(params)
        bodies = [judge._body(build_messages(it.conversation, it.response, [c], "one"), "one", True, False)
                  for it, c in pairs]
        one_each = [GradingItem(it.conversation, it.response, [c]) for it, c in pairs]
        bare_pass(base_url, bodies, args.concurrency)  # warm-up: the prefix cache for every pass
        bare1, ok1 = bare_pass(base_url, bodies, args.concurrency)
        t0 = time.perf_counter()
        asyncio.run(_grade(judge, one_each))
        client_s = time.perf_counter() - t0
        bare2, ok2 = bare_pass(base_url, bodies, args.concurrency)
    n = len(bodies)
    ref = statistics.mean([bare1, bare2])
    stats = judge.stats
    failed = sum(stats.failures.values())
    res = {"requests": n, "concurrency": args.concurrency, "bare_s": [round(bare1, 1), round(bare2, 1)],
           "client_s": round(client_s, 1), "server_req_per_s": round(n / ref, 3),
           "client_req_per_s": round(n / client_s, 3), "ratio": round(ref / client_s, 3),
           "client_failures": failed, "bare_failures": 2 * n - ok1 - ok2,
           "prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.completion_tokens}
    Path(ROOT / "outputs" / "bench").mkdir(parents=True, exist_ok=True)
    (ROOT / "outputs" / "bench" / "real_judge_throughput.json").write_text(json.dumps(res, indent=1))
    return (f"real judge throughput: client {res['client_req_per_s']} req/s vs server {res['server_req_per_s']} req/s "
            f"(bare client, same {n} requests, concurrency {args.concurrency}) = {res['ratio']:.0%} of what the "
            f"server sustains; failures client {failed}, bare {res['bare_failures']}")


def cohen_kappa(a: list[bool], b: list[bool]) -> float | None:
    if not a:
        return None
    po = sum(x == y for x, y in zip(a, b)) / len(a)
    pa, pb = sum(a) / len(a), sum(b) / len(b)
    pe = pa * pb + (1 - pa) * (1 - pb)
    return None if pe == 1 else round((po - pe) / (1 - pe), 3)


def agreement(args) -> str:
    items = grading_items(args.examples)
    modes = {"per_criterion": {"mode": "per_criterion"}, f"batched_k{args.k}": {"mode": "batched", "criteria_per_call": args.k},
             "all": {"mode": "all"}}
    verdicts, failures, seconds, calls = {}, {}, {}, {}
    with judge_url(args.url) as (base_url, _):
        for name, kw in modes.items():
            multi = kw["mode"] != "per_criterion"
            judge = OpenAIJudge(judge_params(base_url, max_concurrency=args.concurrency,
                                             max_tokens=200 * (args.k if kw["mode"] == "batched" else 4) if multi else 200,
                                             **kw))
            t0 = time.perf_counter()
            out = asyncio.run(_grade(judge, items))
            seconds[name] = round(time.perf_counter() - t0, 1)
            verdicts[name] = [v for row in out for v in row]
            failures[name] = dict(Counter(v.failure_kind for v in verdicts[name] if v.failed))
            calls[name] = judge.stats.calls
    names = list(modes)
    met = {n: round(sum(v.met for v in verdicts[n] if not v.failed) / max(1, sum(not v.failed for v in verdicts[n])), 3)
           for n in names}
    kappa = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            both = [(x.met, y.met) for x, y in zip(verdicts[a], verdicts[b]) if not x.failed and not y.failed]
            kappa[f"{a}~{b}"] = {"n": len(both), "kappa": cohen_kappa([x for x, _ in both], [y for _, y in both]),
                                 "agree": round(sum(x == y for x, y in both) / max(1, len(both)), 3)}
    n = len(verdicts[names[0]])
    res = {"criteria": n, "responses": len(items), "met_rate": met, "kappa": kappa, "failures": failures,
           "seconds": seconds, "calls": calls}
    Path(ROOT / "outputs" / "bench").mkdir(parents=True, exist_ok=True)
    (ROOT / "outputs" / "bench" / "real_judge_agreement.json").write_text(json.dumps(res, indent=1))
    pairs = ", ".join(f"{k} kappa {v['kappa']} (n={v['n']})" for k, v in kappa.items())
    return (f"grading-mode agreement on {n} criteria ({len(items)} responses): met rate "
            + ", ".join(f"{k} {v}" for k, v in met.items()) + f"; {pairs}; failures "
            + ", ".join(f"{k} {sum(v.values())}" for k, v in failures.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["throughput", "agreement"])
    ap.add_argument("--url", help="base URL of a running server (…/v1); default: start one")
    ap.add_argument("--criteria", type=int, default=24)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--examples", type=int, default=3)
    ap.add_argument("--k", type=int, default=3)
    args = ap.parse_args()
    print(throughput(args) if args.what == "throughput" else agreement(args))


if __name__ == "__main__":
    main()
