"""Stands in for `accelerate launch` in the sweep executor tests (no GPUs here).

Not a test module. Appends how it was called (argv, CUDA_VISIBLE_DEVICES, thread count) as one
JSON line to $FAKE_LAUNCH_RECORD, then starts `python -m MODULE ARGS` once per process with the
rank variables accelerate would set, and exits with the worst exit code.
"""

import json
import os
import subprocess
import sys


def main() -> int:
    args = sys.argv[1:]
    n = int(args[args.index("--num_processes") + 1])
    port = args[args.index("--main_process_port") + 1]
    module = args[args.index("-m") + 1:]
    with open(os.environ["FAKE_LAUNCH_RECORD"], "a") as f:
        f.write(json.dumps({"argv": args, "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
                            "omp": os.environ.get("OMP_NUM_THREADS")}) + "\n")
    procs = [subprocess.Popen([sys.executable, "-m", *module],
                              env={**os.environ, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(n),
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port})
             for r in range(n)]
    return max(p.wait() for p in procs)


if __name__ == "__main__":
    sys.exit(main())
