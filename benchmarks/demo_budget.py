"""Wall time and peak memory of a demo suite (`ruscarl demo`; the main job: sandbox) on this machine.

Runs the demo as a child process into a fresh output folder, with a fresh policy cache so the
warm start's SFT build is included (as on a fresh clone), and samples the resident memory of
the whole process tree (the demo process plus its papermill kernels) twice a second. The
budget is 8 minutes and 4 GB on 2 CPU cores. Next to it, the line quotes the robustness of the
demo configuration (RuscaRL minus baseline over worlds, seeds, threads and kernel settings) from
the newest `benchmarks/sandbox_robustness.py --configs default` summary in each --robustness
folder (one per grid run, e.g. one per kernel setting), because a faster demo only counts if
the effect it shows still holds. Prints one summary line.

    python benchmarks/demo_budget.py [--out outputs/bench/demo_budget] [--keep-cache] [--robustness DIR ...]

`--suite healthbench` times the real path instead (params/healthbench_cpu.yaml: SmolLM2 policy,
the demo's own vLLM judge server, start-up included, a fresh verdict cache): budget 20 minutes
and 8 GB; the registered model folder is reused if built (about 50 s more when not).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass  # a process that ended between listing and reading
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="outputs/bench/demo_budget")
    ap.add_argument("--suite", choices=["sandbox", "healthbench"], default="sandbox")
    ap.add_argument("--params", default=None, help="default: the suite's params file")
    ap.add_argument("--keep-cache", action="store_true", help="reuse a policy built by an earlier run")
    ap.add_argument("--robustness", nargs="+", default=["outputs/bench/sandbox_robustness"],
                    help="where sandbox_robustness.py wrote its summaries (one --out per grid, e.g. one per "
                    "kernel setting: each is quoted)")
    args = ap.parse_args()

    if args.suite == "healthbench":
        return healthbench_budget(args)
    args.params = args.params or "params/sandbox.yaml"
    out = (ROOT / args.out).resolve()
    demo_dir, cache = out / "demo", out / "policy_cache"
    shutil.rmtree(demo_dir, ignore_errors=True)
    if not args.keep_cache:
        shutil.rmtree(cache, ignore_errors=True)
    raw = yaml.safe_load((ROOT / args.params).read_text())
    raw.setdefault("sandbox", {})["cache_dir"] = str(cache)
    raw.setdefault("output", {})["dir"] = str(out / "runs")
    out.mkdir(parents=True, exist_ok=True)
    params = out / "params.yaml"
    params.write_text(yaml.safe_dump(raw, sort_keys=False))

    wall, peak, headline = run_timed("sandbox", demo_dir, params, out)
    scores = headline["heldout_score"]
    print(
        f"demo_budget: wall {wall / 60:.1f} min (budget 8), peak RSS {peak / 2**30:.2f} GB (budget 4) | "
        f"held-out score start {scores['start']:.3f} ruscarl {scores['ruscarl']:.3f} baseline "
        f"{scores['baseline']:.3f} | start policy unhinted {headline['start_unhinted_score']:.3f} "
        f"hinted {headline['start_hinted_score']:.3f} | {'policy reused' if args.keep_cache else 'policy built'} | "
        + " | ".join(robustness_quote(ROOT / folder) for folder in args.robustness)
    )


def run_timed(suite: str, demo_dir: Path, params: Path, out: Path) -> tuple[float, int, dict]:
    """(wall seconds, peak RSS of the process tree, headline) of one `ruscarl demo` run."""
    cmd = [sys.executable, "-m", "ruscarl_lib.cli", "demo", "--suite", suite, "--out", str(demo_dir),
           "--params", str(params)]
    log = (out / "demo.log").open("w")
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    proc, peak = psutil.Process(child.pid), 0
    while child.poll() is None:
        peak = max(peak, tree_rss(proc))
        time.sleep(0.5)
    wall = time.perf_counter() - t0
    log.close()
    if child.returncode != 0:
        tail = (out / "demo.log").read_text()[-3000:]
        raise SystemExit(f"demo failed (exit {child.returncode}); log tail:\n{tail}")
    return wall, peak, json.loads((demo_dir / "headline.json").read_text())


def healthbench_budget(args) -> None:
    out = (ROOT / args.out).resolve().with_name(Path(args.out).name + "_healthbench")
    demo_dir = out / "demo"
    shutil.rmtree(out, ignore_errors=True)
    raw = yaml.safe_load((ROOT / (args.params or "params/healthbench_cpu.yaml")).read_text())
    raw["judge"]["cache_path"] = str(out / "verdicts.sqlite")  # fresh: every verdict asked of the server
    raw.setdefault("output", {})["dir"] = str(out / "runs")
    out.mkdir(parents=True, exist_ok=True)
    params = out / "params.yaml"
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    wall, peak, headline = run_timed("healthbench", demo_dir, params, out)
    scores = headline["heldout_score"]
    print(f"demo_budget healthbench: wall {wall / 60:.1f} min (budget 20), peak RSS {peak / 2**30:.2f} GB (budget 8) | "
          f"judge server start-up {headline.get('judge_server_startup_s')} s | scores by the 135M judge: start "
          f"{scores['start']:.3f} ruscarl {scores['ruscarl']:.3f} baseline {scores['baseline']:.3f} (not a learning claim)")


def robustness_quote(folder: Path) -> str:
    """The demo configuration's measured spread, or a note saying it has not been measured."""
    found = sorted(folder.glob("summary_default_heldout.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        return f"robustness of the demo configuration not measured (no summary under {folder.name}/)"
    s = json.loads(found[-1].read_text())["summary"]
    grid = " x ".join(f"{name} {s[name]}" for name in ("worlds", "seeds", "threads", "kernels") if name in s)
    return (f"robustness (default config, {s['n']} runs over {grid}): "
            f"ruscarl-baseline min {s['gap_min']:.3f} median {s['gap_median']:.3f} max {s['gap_max']:.3f}, "
            f"collapses {len(s['collapses'])}, runaways {len(s.get('runaways', []))}")


if __name__ == "__main__":
    main()
