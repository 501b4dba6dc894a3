"""Command line.

    ruscarl demo                      the main job: the notebook suite headless on CPU data
    ruscarl run NOTEBOOK -p k=v       execute one notebook through papermill
    ruscarl train --params f.yaml     GRPO training (same as python -m ruscarl_lib.train.run)
    ruscarl sweep params/sweep_x.yaml papermill sweep (same as python -m ruscarl_lib.sweeps.run);
                                      --gpus-per-run N, --executor ray [--address ...]
    ruscarl judge-server [--params f.yaml] [--model NAME] [--port P]
                                      a local vLLM judge in the foreground (judge.server section)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml


def _parse_kv(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"expected key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key] = yaml.safe_load(value)  # numbers, booleans and lists as YAML reads them
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train":
        from ruscarl_lib.train.run import main as train_main

        return train_main(argv[1:])
    if argv and argv[0] == "sweep":
        from ruscarl_lib.sweeps.run import main as sweep_main

        return sweep_main(argv[1:])
    if argv and argv[0] == "judge-server":
        from ruscarl_lib.judges.server import main as server_main

        return server_main(argv[1:])
    parser = argparse.ArgumentParser(prog="ruscarl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("train", help="GRPO training; see `ruscarl train --help`")
    sub.add_parser("sweep", help="papermill sweep; see `ruscarl sweep --help`")
    sub.add_parser("judge-server", help="a local vLLM judge server; see `ruscarl judge-server --help`")

    demo = sub.add_parser("demo", help="run the notebook suite headless on CPU data")
    demo.add_argument("--suite", choices=["foundation", "sandbox", "healthbench"], default="sandbox",
                      help="foundation: notebooks 01-02 on the embedded sample; sandbox: 00-05 on "
                           "the CPU sandbox (training and evaluation included); healthbench: 01-05 on "
                           "the real path (SmolLM2 policy, local vLLM judge; HealthBench if configured)")
    demo.add_argument("--out", default="outputs/demo")
    demo.add_argument("--params", default=None, help="params file (default: per suite)")
    demo.add_argument("--force", action="store_true", help="rerun every stage from scratch (retrain, regrade); without it a finished "
                           "stage is kept when its inputs are unchanged")

    run = sub.add_parser("run", help="execute one notebook through papermill")
    run.add_argument("notebook")
    run.add_argument("--out", required=True, help="path of the executed notebook")
    run.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE")
    run.add_argument("--html", help="also write an HTML report here")

    args = parser.parse_args(argv)
    if args.command == "demo":
        from ruscarl_lib.demo import run_demo

        headline = run_demo(args.out, args.params, suite=args.suite, force=args.force)
        print(json.dumps(headline, indent=2))
        print(f"\nReport: {headline['report']}")
        print(f"Executed notebooks: {Path(headline['notebooks'][0]).parent}")
        return 0
    if args.command == "run":
        from ruscarl_lib.notebook.reports import export_html, run_notebook

        out = run_notebook(args.notebook, args.out, _parse_kv(args.param))
        print(f"executed notebook: {out}")
        if args.html:
            print(f"report: {export_html([out], args.html, title=out.stem)}")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
