"""Stands in for the `vllm` executable in judge-server tests: `fake_vllm.py serve MODEL --port P
--served-model-name N ...` serves the scripted judge of tests/judge_server.py on that port.

Not a test file. Behaviour from the environment:
- FAKE_VLLM_EXIT_CODE: print a line and exit with this code at once (a server that fails to start);
- FAKE_VLLM_DELAY_S: wait this long before listening (a slow start);
- FAKE_VLLM_ARGS_FILE: write the arguments and selected environment here as JSON.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from judge_server import JudgeServer  # noqa: E402


def main(argv: list[str]) -> int:
    assert argv[0] == "serve", argv
    opts = dict(zip(argv[2::2], argv[3::2]))
    if os.environ.get("FAKE_VLLM_ARGS_FILE"):
        env = {k: os.environ.get(k) for k in ("VLLM_CPU_KVCACHE_SPACE", "OMP_NUM_THREADS", "HF_HUB_OFFLINE")}
        Path(os.environ["FAKE_VLLM_ARGS_FILE"]).write_text(json.dumps({"argv": argv, "env": env}))
    print(f"fake vllm: serving {argv[1]} as {opts.get('--served-model-name')}", flush=True)
    if os.environ.get("FAKE_VLLM_EXIT_CODE"):
        print("fake vllm: exiting as asked", flush=True)
        return int(os.environ["FAKE_VLLM_EXIT_CODE"])
    time.sleep(float(os.environ.get("FAKE_VLLM_DELAY_S", "0")))
    server = JudgeServer(model=opts["--served-model-name"], port=int(opts["--port"])).start()
    try:
        while True:
            time.sleep(1.0)
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
