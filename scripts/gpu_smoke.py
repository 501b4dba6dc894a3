"""GPU smoke check of RuscaRL training: a tiny model, a few steps, the clean-prompt contract.

    python scripts/gpu_smoke.py --backend transformers|unsloth [--steps 4] [--out DIR]

Builds the tiny local model (nothing is downloaded), trains a few RL steps of the toy task on
the chosen backend with the contract probe, evaluates once, and prints the device, per-step
times and the contract report. Exits non-zero on any violation. `scripts/gpu_smoke.sh` runs
it for every backend available.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", choices=["transformers", "unsloth"], default="transformers")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from ruscarl_lib.params import TrainParams
    from ruscarl_lib.training import prepare_backend

    prepare_backend(TrainParams(backend=args.backend))  # Unsloth must come before trl
    import torch

    from ruscarl_lib.contract import ContractProbe, check_contract, check_eval_unscaffolded
    from ruscarl_lib.rollouts import to_train_dataset
    from ruscarl_lib.run_outputs import read_metrics
    from ruscarl_lib.tiny_model import save_tiny_model
    from ruscarl_lib.toy_task import keyword_reward, make_examples, toy_params
    from ruscarl_lib.training import run_training

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (no CUDA!)"
    out = Path(args.out or tempfile.mkdtemp(prefix="ruscarl-gpu-smoke-"))
    model_dir = save_tiny_model(out / "tiny_model", hidden_size=64)
    params = toy_params(
        model_dir, out, f"smoke_{args.backend}", backend=args.backend, max_steps=args.steps,
        resume=False, updates_per_step=2, per_device_batch_size=2, kl_coef=0.01,
        max_completion_length=16, scaffold={"step_decay": "linear"},
    )
    t0 = time.perf_counter()
    result = run_training(params, train_examples=make_examples(8), reward_funcs=[keyword_reward],
                          trainer_cls=ContractProbe)
    wall = time.perf_counter() - t0
    trainer = result.trainer
    eval_rows = [{"prompt": ex.messages} for ex in make_examples(2)]
    trainer.evaluate(eval_dataset=to_train_dataset(make_examples(2)))
    report = check_contract(trainer)
    n_eval = check_eval_unscaffolded(trainer, eval_rows)
    m = read_metrics(result.run_dir)
    print(json.dumps({
        "backend": args.backend,
        "device": device,
        "model_device": str(next(trainer.model.parameters()).device),
        "dtype": str(next(trainer.model.parameters()).dtype),
        "use_vllm": trainer.args.use_vllm,
        "optimizer_steps": result.global_step,
        "step_times_s": [round(float(x), 4) for x in m["step_time"]],
        "wall_s": round(wall, 2),
        "peak_cuda_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None,
        "eval_prompts_checked": n_eval,
    }, indent=2))
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
