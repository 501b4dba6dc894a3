"""Spread of the sandbox learning effect (RuscaRL minus baseline) over seeds, threads, CPU
kernel settings and worlds; prints one summary line.

Each cell (configuration x world seed x training seed x torch threads x kernel setting) runs
in its own process with the kernel environment set before torch loads; see
`ruscarl_lib/sandbox/robustness.py` for the cell, the warm-start rebuild rule and the collapse
rule. Finished cells are kept under --out and reused only while their inputs are unchanged, so
the grid can run in parts:

    # the demo (and CI) configuration over seeds x threads {1,2} x kernels {default, avx2}
    python benchmarks/sandbox_robustness.py --configs default --seeds 0 1 2 3 --threads 1 2 --kernels default avx2
    # the demo configuration on its own world and three others, 3 seeds each, one setting
    python benchmarks/sandbox_robustness.py --configs default --worlds default 1 2 3 --seeds 0 1 2 --threads 1

`--split validation` evaluates on the validation split (for tuning); held-out is the default.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params/sandbox.yaml")
    ap.add_argument("--configs", nargs="+", default=["default"])
    ap.add_argument("--worlds", nargs="+", default=["default"], help="world seeds; 'default' keeps the file's")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--kernels", nargs="+", default=["default", "avx2"])
    ap.add_argument("--split", default="heldout", choices=["heldout", "validation"])
    ap.add_argument("--threshold", type=float, default=0.1, help="gap a cell must reach to count as clearing")
    ap.add_argument("--jobs", type=int, default=1, help="warm-start groups run at once")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="params overrides for every cell")
    ap.add_argument("--out", default="outputs/bench/sandbox_robustness")
    args = ap.parse_args()

    import yaml

    from ruscarl_lib.sandbox.robustness import Cell, cells_table, run_cells, summarize

    extra = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    worlds = [None if w == "default" else int(w) for w in args.worlds]
    cells = [Cell(c, w, s, t, k) for c, w, s, t, k in
             itertools.product(args.configs, worlds, args.seeds, args.threads, args.kernels)]
    t0 = time.perf_counter()
    results = run_cells(cells, args.params, args.out, split=args.split, extra=extra, jobs=args.jobs,
                        echo=lambda m: print(m, file=sys.stderr, flush=True))
    summary = summarize(results, args.threshold)
    summary.update(split=args.split, configs=args.configs, worlds=args.worlds, seeds=args.seeds,
                   threads=args.threads, kernels=args.kernels, overrides=extra,
                   wall_s=round(time.perf_counter() - t0, 1))
    os.makedirs(args.out, exist_ok=True)
    tag = "_".join([*args.configs, args.split])
    if extra:  # runs with overrides share --out (and its warm starts) without overwriting each other
        import hashlib

        tag += "_set-" + hashlib.sha256(json.dumps(extra, sort_keys=True).encode()).hexdigest()[:8]
    with open(os.path.join(args.out, f"summary_{tag}.json"), "w") as f:
        json.dump({"summary": summary, "cells": results}, f, indent=2)
    with open(os.path.join(args.out, f"table_{tag}.md"), "w") as f:
        f.write(cells_table(results))
    print(
        f"sandbox_robustness: {summary['n']} cells ({'/'.join(args.configs)}, {args.split}; worlds {args.worlds}, "
        f"seeds {args.seeds}, threads {args.threads}, kernels {args.kernels}) | ruscarl-baseline "
        f"min {summary['gap_min']:.3f} median {summary['gap_median']:.3f} max {summary['gap_max']:.3f} | "
        f"{100 * summary['frac_clear']:.0f}% >= {args.threshold} | ruscarl median {summary['ruscarl_median']:.3f}, "
        f"baseline max {summary['baseline_max']:.3f} (unclipped median {summary['baseline_unclipped_median']}, "
        f"zero-variance groups median {summary['baseline_zero_var_median']}) | collapses {len(summary['collapses'])}"
        f"{' ' + str(summary['collapses']) if summary['collapses'] else ''}, runaways {len(summary['runaways'])}"
        f"{' ' + str(summary['runaways']) if summary['runaways'] else ''} | {summary['wall_s']:.0f}s"
    )


if __name__ == "__main__":
    main()
