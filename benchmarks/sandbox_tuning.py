"""Choose sandbox hyperparameters on the VALIDATION split; prints one summary line.

Every value of every `--grid` key is tried (one key at a time, the others at the params
file's values) for the RuscaRL arm over `--seeds`, from one warm start, evaluated without
scaffolds on the validation split (condition pairs disjoint from training and held-out). The
table (key, value, seed, validation score, unclipped mean) goes to `tuning.csv` and
`tuning.md` under --out; the best value per key is the one with the highest mean validation
score. Held-out numbers are never read here.

    python benchmarks/sandbox_tuning.py --config small --seeds 0 1 \
        --grid train.learning_rate=1e-4,2e-4,4e-4 scaffold.t0=0.3,0.5,0.7
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params/sandbox.yaml")
    ap.add_argument("--config", default="small", help="a configuration of ruscarl_lib.sandbox.robustness.CONFIGS")
    ap.add_argument("--world", default="default", help="world seed; 'default' keeps the file's")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--grid", nargs="+", required=True, metavar="KEY=V1,V2,...")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every value tried")
    ap.add_argument("--out", default="outputs/bench/sandbox_tuning")
    args = ap.parse_args()

    import pandas as pd
    import yaml

    from ruscarl_lib.common.paths import atomic_write_text, resolve_path
    from ruscarl_lib.sandbox.compare import compare_arms
    from ruscarl_lib.sandbox.robustness import Cell, cell_params

    root = resolve_path(args.out)
    world = None if args.world == "default" else int(args.world)
    base = Cell(args.config, world, args.seeds[0], 1, "default")
    t0 = time.perf_counter()
    rows = []
    for item in args.grid:
        key, values = item.split("=", 1)
        for raw in values.split(","):
            value = yaml.safe_load(raw)
            fixed = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.set)}
            params = cell_params(base, args.params, {**fixed, key: value})
            params.sandbox.cache_dir = str(root / "policies")
            folder = root / f"{key}={raw}"
            table = compare_arms(params, args.seeds, folder, split="validation", arms=("ruscarl",), progress=False)
            for r in table.to_dict("records"):
                if r["arm"] == "ruscarl":
                    rows.append({"key": key, "value": raw, "seed": int(r["seed"]), "validation_score": round(r["score"], 4),
                                 "validation_unclipped": r["score_unclipped"]})
                    print(f"[tuning] {key}={raw} seed {int(r['seed'])}: validation {r['score']:.3f}", file=sys.stderr, flush=True)
    frame = pd.DataFrame(rows)
    root.mkdir(parents=True, exist_ok=True)
    frame.to_csv(root / "tuning.csv", index=False)
    means = frame.groupby(["key", "value"], sort=False)["validation_score"].agg(["mean", "min", "max", "count"]).reset_index()
    best = means.loc[means.groupby("key", sort=False)["mean"].idxmax()]
    lines = ["| key | value | validation mean | min | max | seeds |", "| --- | --- | --- | --- | --- | --- |"]
    for r in means.itertuples():
        lines.append(f"| {r.key} | {r.value} | {r.mean:.3f} | {r.min:.3f} | {r.max:.3f} | {r.count} |")
    atomic_write_text(root / "tuning.md", "\n".join(lines) + "\n")
    picks = ", ".join(f"{r.key}={r.value} ({r.mean:.3f})" for r in best.itertuples())
    print(f"sandbox_tuning: config {args.config}, world {args.world}, seeds {args.seeds}, split validation | "
          f"best {picks} | table {os.path.relpath(root / 'tuning.md')} | {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
