"""Run in .venv-vllm by tests/test_vllm_generation.py: greedy answers from vLLM's CPU build
through ruscarl_lib.evaluate.generate.generate_vllm, with and without a LoRA adapter. Not a test file.

    python tests/vllm_generation_script.py ADAPTER_DIR OUT_JSON
"""

from __future__ import annotations

import json
import sys
import time


def main(adapter: str, out: str) -> None:
    from ruscarl_lib.data.read import load_sample_dataset
    from ruscarl_lib.evaluate.generate import SamplingConfig, generate_vllm

    prompts = [ex.messages for ex in load_sample_dataset(2)]
    cfg = SamplingConfig(n_samples=1, temperature=0.0, top_p=1.0, top_k=0, max_new_tokens=24, batch_size=2, seed=0)
    t0 = time.perf_counter()
    lora, engine = generate_vllm("smollm2-135m-instruct", prompts, cfg, [0, 1], adapter=adapter, dtype="float32",
                                 max_lora_rank=8)
    start_s = time.perf_counter() - t0
    base, _ = generate_vllm("smollm2-135m-instruct", prompts, cfg, [0, 1], engine=engine)  # same engine, no adapter
    keep = ("response", "response_ids", "truncated")
    with open(out, "w") as f:
        json.dump({"lora": [{k: r[k] for k in keep} for r in lora], "base": [{k: r[k] for k in keep} for r in base],
                   "engine_start_and_first_batch_s": round(start_s, 1)}, f)


if __name__ == "__main__":  # vLLM starts its engine process with spawn: the guard is required
    main(sys.argv[1], sys.argv[2])
