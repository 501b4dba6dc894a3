"""Run in .venv-vllm by tests/test_vllm_colocate.py: one GRPO step of the scaffolded trainer
with TRL's colocated vLLM engine on CPU (SmolLM2, LoRA), probed by the clean-prompt contract.
Not a test file.

    python tests/vllm_colocate_script.py RUN_DIR OUT_JSON
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

# One process, no torch.distributed launcher: vLLM in-process, TRL's colocate launcher settings.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}.items():
    os.environ.setdefault(key, value)


def _length_reward(prompts=None, completions=None, **_):
    """A reward that differs within a group, so the step has advantages to apply."""
    return [float(len(str(c)) % 7) for c in completions]


def main(run_dir: str, out: str) -> None:
    from ruscarl_lib.train.contract import ContractProbeMixin, check_contract
    from ruscarl_lib.data.read import load_sample_dataset
    from ruscarl_lib.params import Params
    from ruscarl_lib.train.run import run_training

    examples = [dataclasses.replace(ex, rubric=ex.rubric[:2]) for ex in load_sample_dataset(2)]
    params = Params.model_validate({
        "output": {"dir": run_dir, "run_name": "colocate"},
        "train": {"model": "smollm2-135m-instruct", "backend": "transformers", "finetune": "lora",
                  "dtype": "float32", "group_size": 4, "prompts_per_step": 1, "per_device_batch_size": 4,
                  "max_steps": 1, "save_steps": 100, "max_prompt_length": 512, "max_completion_length": 16,
                  "gradient_checkpointing": False, "learning_rate": 1e-4, "kl_coef": 0.0, "lora_r": 8,
                  "lora_alpha": 16, "use_vllm": True, "vllm_mode": "colocate"},
        "scaffold": {"step_decay": "linear"},
        "seed": 0,
    })
    t0 = time.perf_counter()
    result = run_training(params, train_examples=examples, reward_funcs=[_length_reward],
                          trainer_cls=ContractProbeMixin)
    trainer = result.trainer
    report = check_contract(trainer)
    tok = trainer.processing_class
    gens = [c for c in trainer.gen_calls if c["training"]]
    rollouts = []
    for rnd, gen in zip(trainer.rounds, gens):
        for plan, ids in zip(rnd["plans"], gen["prompt_ids"]):
            ex = next(e for e in examples if e.id == plan.example_id)
            rollouts.append({"text": tok.decode(ids), "shown": [ex.rubric[i].text for i in plan.shown]})
    with open(out, "w") as f:
        json.dump({"report": dataclasses.asdict(report), "rollouts": rollouts,
                   "engine": type(trainer.vllm_generation.llm).__module__,
                   "run_dir": str(result.run_dir), "seconds": round(time.perf_counter() - t0, 1)}, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
