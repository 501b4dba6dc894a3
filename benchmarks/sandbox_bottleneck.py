"""The exploration bottleneck of the sandbox's starting policy; prints one summary line.

The warm start (built or taken from the cache for the params file's world and recipe) answers
every task of a split G times with and without the full rubric as a hint, under the training
sampling (temperature 0.7 / top-p 0.8 / top-k 20); each answer is graded by the rule judge.

    python benchmarks/sandbox_bottleneck.py [--split validation] [--tasks 32] [--group-size 8]
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params/sandbox.yaml")
    ap.add_argument("--split", default="validation", choices=["train", "validation", "heldout"])
    ap.add_argument("--tasks", type=int, default=32)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--cache-dir", default=None, help="where warm starts are cached (default: the params file's)")
    args = ap.parse_args()

    from ruscarl_lib.params import load_params
    from ruscarl_lib.sandbox import bottleneck_report, build_world, ensure_policy
    from ruscarl_lib.sandbox.prepare import policy_config, world_config

    params = load_params(args.params)
    t0 = time.perf_counter()
    world = build_world(world_config(params))
    policy = ensure_policy(world, policy_config(params), root=args.cache_dir or params.sandbox.cache_dir)
    rep = bottleneck_report(policy, world, split=args.split, n_tasks=args.tasks, group_size=args.group_size)
    n = min(args.tasks, len(world.split(args.split))) * args.group_size
    print(f"sandbox_bottleneck: world seed {world.config.seed}, {args.split} split, {n} answers per side | "
          f"unhinted {rep.unhinted_score:.3f} (zero-variance groups {rep.unhinted_zero_var_groups:.0%}) | "
          f"hinted {rep.hinted_score:.3f} | policy {policy.path.name} | {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
