"""GPU smoke check of RuscaRL training on one backend: a tiny model, a few RL steps, both arms.

    python scripts/gpu_smoke.py --backend transformers|unsloth [--steps 3] [--out DIR]
                                [--json FILE] [--device cuda|cpu]

Builds a tiny local Qwen2-shaped model (nothing is downloaded), then trains a few RL steps of
the toy task with scaffolds on and with scaffolds off, each through `run_training` with the
contract probe. For each arm it checks: the trainer's GRPO base class (Unsloth's for backend
unsloth on CUDA), the live first-step clean-prompt contract and the whole-run offline proof, and
that evaluation is never scaffolded; it reports step times and peak GPU memory. One backend per
process: Unsloth rebinds TRL's trainer process-wide (scripts/gpu_smoke.sh runs both).
`--device cpu` hides the GPU, only to check the script itself on a CPU machine.
Exits non-zero on any failed check.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _arm(backend: str, scaffold: bool, model_dir: Path, out: Path, steps: int, cuda: bool) -> dict:
    import torch

    from ruscarl_lib.train.contract import ContractProbeMixin, check_contract, check_eval_unscaffolded
    from ruscarl_lib.train.dataset import to_train_dataset
    from ruscarl_lib.train.run_folder import read_metrics
    from ruscarl_lib.train.smoke_task import keyword_reward, make_examples, toy_params
    from ruscarl_lib.train.run import run_training

    name = f"{backend}_{'on' if scaffold else 'off'}"
    params = toy_params(
        model_dir, out, name, backend=backend, max_steps=steps, resume=False, updates_per_step=2,
        per_device_batch_size=2, kl_coef=0.01, max_completion_length=16,
        dtype="bfloat16" if cuda else "float32",
        scaffold={"enabled": scaffold, "step_decay": "linear"},
    )
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result = run_training(params, train_examples=make_examples(8), reward_funcs=[keyword_reward],
                          trainer_cls=ContractProbeMixin)
    wall = time.perf_counter() - t0
    trainer = result.trainer
    record = json.loads((result.run_dir / "trainer.json").read_text())
    if backend == "unsloth" and cuda and not record["base_is_unsloth"]:
        raise AssertionError(f"backend unsloth trained on {record['base_class']}, not Unsloth's trainer")
    eval_examples = make_examples(2)
    trainer.evaluate(eval_dataset=to_train_dataset(eval_examples))
    report = check_contract(trainer)
    n_eval = check_eval_unscaffolded(trainer, [{"prompt": ex.messages} for ex in eval_examples])
    times = [float(x) for x in read_metrics(result.run_dir)["step_time"].dropna()]
    param = next(trainer.model.parameters())
    arm = {
        "scaffold": scaffold,
        "base_class": record["base_class"],
        "base_is_unsloth": record["base_is_unsloth"],
        "model_device": str(param.device),
        "dtype": str(param.dtype),
        "use_vllm": bool(trainer.args.use_vllm),
        "optimizer_steps": result.global_step,
        "rl_steps": result.rl_steps,
        "step_times_s": [round(t, 4) for t in times],
        # the first update includes warm-up (kernel compilation, allocator growth)
        "median_step_s_after_first": round(statistics.median(times[1:]), 4) if len(times) > 1 else None,
        "train_wall_s": round(wall, 2),
        "peak_cuda_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None,
        "live_contract": trainer.contract_report,
        "contract": report.summary(),
        "eval_prompts_checked": n_eval,
        "effective_args": {k: record["args"].get(k) for k in
                           ("epsilon_high", "optim", "per_device_eval_batch_size", "bf16", "fp16",
                            "per_device_train_batch_size", "gradient_accumulation_steps",
                            "steps_per_generation", "loss_type", "beta")},
    }
    del trainer, result
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return arm


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=["transformers", "unsloth"], default="transformers")
    ap.add_argument("--steps", type=int, default=3, help="RL steps per arm (2 updates each)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--json", default=None, help="write the results here too")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    args = ap.parse_args(argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

    from ruscarl_lib.params import TrainParams
    from ruscarl_lib.train.backend import prepare_backend

    t0 = time.perf_counter()
    prepare_backend(TrainParams(backend=args.backend))  # Unsloth before trl/transformers/peft
    backend_import_s = time.perf_counter() - t0
    import torch

    from ruscarl_lib.models.tiny import save_tiny_model

    cuda = torch.cuda.is_available()
    if args.device == "cuda" and not cuda:
        print("no CUDA device visible (use --device cpu to check the script on a CPU)", file=sys.stderr)
        return 2
    out = Path(args.out or tempfile.mkdtemp(prefix="ruscarl-gpu-smoke-"))
    # Qwen2-shaped, head_dim 64 (a size every attention kernel supports), a few M parameters
    model_dir = save_tiny_model(out / "tiny_model", hidden_size=256, num_heads=4, num_kv_heads=2)
    res: dict = {
        "backend": args.backend,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "backend_import_s": round(backend_import_s, 2),
        "arms": {},
    }
    ok = True
    for scaffold in (True, False):
        key = "scaffold_on" if scaffold else "scaffold_off"
        try:
            res["arms"][key] = _arm(args.backend, scaffold, model_dir, out, args.steps, cuda)
        except Exception as err:  # report every arm, then fail
            ok = False
            res["arms"][key] = {"error": f"{type(err).__name__}: {err}"}
    on, off = res["arms"].get("scaffold_on", {}), res["arms"].get("scaffold_off", {})
    if on.get("median_step_s_after_first") and off.get("median_step_s_after_first"):
        res["step_time_ratio_on_over_off"] = round(on["median_step_s_after_first"] / off["median_step_s_after_first"], 3)
    res["ok"] = ok
    text = json.dumps(res, indent=2, default=str)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
