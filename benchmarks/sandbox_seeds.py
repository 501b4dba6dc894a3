"""RuscaRL vs the plain rubric-GRPO baseline on the CPU sandbox, over several training seeds.

One world and one warm start (from the params file); for every seed both arms are trained with
identical params except `scaffold.enabled` and evaluated on the held-out split without
scaffolds (`sandbox.compare.compare_arms`). Also reports the starting policy with and without
hints (the bottleneck). Resumable: finished (seed, arm) pairs are kept under --out.
Prints one summary line.

    python benchmarks/sandbox_seeds.py [--params params/sandbox.yaml] [--seeds 0 1 2] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params/sandbox.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="outputs/bench/sandbox_seeds")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="params overrides, e.g. sandbox.world.seed=3 train.max_steps=200")
    args = ap.parse_args()

    import yaml

    from ruscarl_lib.params import load_params
    from ruscarl_lib.sandbox import bottleneck_report
    from ruscarl_lib.sandbox.compare import compare_arms, comparison_summary
    from ruscarl_lib.sandbox.prepare import prepare_sandbox

    overrides = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    params = load_params(args.params, overrides)
    t0 = time.perf_counter()
    table = compare_arms(params, args.seeds, args.out)
    files = prepare_sandbox(params, os.path.join(args.out, "sandbox"))  # cached: no rebuild
    bottleneck = bottleneck_report(files.policy, files.world)
    summary = comparison_summary(table)
    summary.update(start_hinted=round(bottleneck.hinted_score, 4), start_unhinted=round(bottleneck.unhinted_score, 4),
                   wall_s=round(time.perf_counter() - t0, 1), overrides=overrides)
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    table.to_csv(os.path.join(args.out, "table.csv"), index=False)
    print(
        f"sandbox_seeds: seeds {summary['seeds']} | held-out score ruscarl {summary['ruscarl_mean']:.3f} "
        f"baseline {summary['baseline_mean']:.3f} | gap per seed {summary['gap_per_seed']} "
        f"(mean {summary['gap_mean']:.3f}, sd {summary['gap_sd']:.3f}, min {summary['gap_min']:.3f}) | "
        f"start policy unhinted {summary['start_unhinted']:.3f} / hinted {summary['start_hinted']:.3f} | "
        f"{summary['wall_s']:.0f}s"
    )


if __name__ == "__main__":
    main()
