"""What scaffolding costs per training step: the same tiny-model GRPO run with and without it.

Both arms use the same seed, data, steps and code path (`scaffold.enabled` is the only
difference) and run one after the other in this process, after a short warm-up run. With a
randomly initialised model the completions of the two arms differ in length, so compare the
ratio together with the completion tokens printed next to it. Scaffolded rollouts only make the
generation prompts longer, so the step-time ratio should stay close to 1 + (extra prompt
tokens' share of the work). Prints the per-step times (first step dropped as warm-up), their
ratio, mean prompt lengths and peak memory (CUDA allocator peak on GPU; on CPU the process's
resident high-water mark, which only grows, so the second arm's number includes the first).

    python benchmarks/train_overhead.py [--steps 6] [--out outputs/bench] [--device-model DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def _peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_arm(model_dir: Path, out_dir: Path, enabled: bool, steps: int, completion_tokens: int) -> dict:
    import torch

    from ruscarl_lib.run_outputs import read_metrics
    from ruscarl_lib.toy_task import keyword_reward, make_examples, toy_params
    from ruscarl_lib.training import run_training

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    params = toy_params(
        model_dir, out_dir, f"scaffold_{'on' if enabled else 'off'}",
        max_steps=steps, resume=False, max_completion_length=completion_tokens,
        # a constant full-strength schedule: every step pays the scaffold's cost
        scaffold={"enabled": enabled, "step_decay": "constant"},
    )
    t0 = time.perf_counter()
    run_training(params, train_examples=make_examples(8), reward_funcs=[keyword_reward])
    wall = time.perf_counter() - t0
    m = read_metrics(out_dir / params.output.run_name)
    times = list(m["step_time"])[1:] or list(m["step_time"])
    return {
        "scaffold": enabled,
        "step_time_mean_s": statistics.mean(times),
        "step_times_s": [round(t, 4) for t in m["step_time"]],
        "wall_s": wall,
        "rollout_prompt_tokens": float(m["scaffold/rollout_prompt_length"].mean()),
        "clean_prompt_tokens": float(m["scaffold/clean_prompt_length"].mean()),
        "completion_tokens": float(m["completions/mean_length"].mean()),
        "peak_memory_mb": _peak_memory_mb(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--completion-tokens", type=int, default=16)
    ap.add_argument("--out", default=None, help="run folder (default: a temporary one)")
    ap.add_argument("--model", default=None, help="a saved model folder (default: build the tiny model)")
    args = ap.parse_args()

    from ruscarl_lib.tiny_model import save_tiny_model

    out = Path(args.out or tempfile.mkdtemp(prefix="ruscarl-bench-"))
    model_dir = Path(args.model) if args.model else save_tiny_model(out / "tiny_model")
    run_arm(model_dir, out / "warmup", True, 2, args.completion_tokens)  # imports, allocator, caches
    off = run_arm(model_dir, out, False, args.steps, args.completion_tokens)
    on = run_arm(model_dir, out, True, args.steps, args.completion_tokens)
    ratio = on["step_time_mean_s"] / off["step_time_mean_s"]
    print(json.dumps({"off": off, "on": on, "step_time_ratio_on_over_off": ratio}, indent=2))
    print(
        f"step time: scaffold off {off['step_time_mean_s']:.3f}s, on {on['step_time_mean_s']:.3f}s, "
        f"ratio {ratio:.2f}; prompt tokens {off['rollout_prompt_tokens']:.0f} -> "
        f"{on['rollout_prompt_tokens']:.0f}; completion tokens {off['completion_tokens']:.1f} / "
        f"{on['completion_tokens']:.1f}; peak memory {off['peak_memory_mb']:.0f} / "
        f"{on['peak_memory_mb']:.0f} MB"
    )


if __name__ == "__main__":
    main()
