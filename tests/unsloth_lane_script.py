"""The forced-Unsloth CPU lane (run by tests/test_unsloth_lane.py inside `.venv-unsloth`).

WHAT IT EXERCISES: Unsloth's *trainer rewrite* (the generated `UnslothGRPOTrainer`, with its
rewritten `_generate_and_score_completions`, `_get_per_token_logps_and_entropies`,
`compute_loss`, config and __init__), NOT its GPU kernels: on CPU there is no Triton, no fused
loss kernel, no vLLM, no 4-bit. On CPU `import unsloth` leaves TRL alone; the rewrite is forced
with `UNSLOTH_ALLOW_CPU=1` and a call of Unsloth's own (private)
`unsloth.models.rl._patch_trl_rl_trainers("grpo_trainer")`, which is what `import unsloth` runs
on a GPU. It rebinds `trl.GRPOTrainer` for the whole process, hence a process of its own.

    python tests/unsloth_lane_script.py OUT_DIR   ->  prints one JSON line of results

1. the scaffolded trainer (with the contract probe) builds on `UnslothGRPOTrainer`, trains a
   few steps, and the clean-prompt contract holds (live first-step check and offline proof);
2. with scaffolds off it matches Unsloth's stock trainer from the same start: same rollouts,
   per-step losses within LOSS_TOL, same LoRA weights within WEIGHT_TOL.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ["UNSLOTH_ALLOW_CPU"] = "1"
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

t0 = time.perf_counter()
import unsloth  # noqa: E402,F401  (first: before transformers, trl, peft)
from unsloth.models.rl import _patch_trl_rl_trainers  # noqa: E402

_patch_trl_rl_trainers("grpo_trainer")
import_s = time.perf_counter() - t0

import torch  # noqa: E402
import trl  # noqa: E402
from peft import PeftModel  # noqa: E402


def _install_mode_stand_ins() -> None:
    """Unsloth's trainer calls `model.for_training()` / `model.for_inference()`, which only
    Unsloth's own loader (`FastLanguageModel`, GPU-only for real) puts on a model. The lane
    trains a plain transformers + PEFT model, so it gets stand-ins doing what those do to the
    mode: train() / eval(). Both the scaffolded and the stock run get the same ones."""
    from transformers import PreTrainedModel

    for cls in (PeftModel, PreTrainedModel):  # whichever the trainer holds as self.model
        if "for_training" not in cls.__dict__:
            cls.for_training = lambda self, use_gradient_checkpointing=True: self.train()
            cls.for_inference = lambda self: self.eval()

#: Stated tolerances of "scaffolds off = Unsloth's stock trainer" (float32 on CPU; the two runs
#: execute the same rewritten code on the same inputs, so any difference is ours).
LOSS_TOL = 1e-6
WEIGHT_TOL = 1e-6


def main(out: Path) -> dict:
    from ruscarl_lib.train.contract import ContractProbeMixin, check_contract
    from ruscarl_lib.train.dataset import to_train_dataset
    from ruscarl_lib.models.tiny import save_tiny_model
    from ruscarl_lib.train.smoke_task import keyword_reward, make_examples, toy_params
    from ruscarl_lib.train.run import attach_lora_for, run_training
    from ruscarl_lib.train.config import build_grpo_config
    from ruscarl_lib.train.backend import load_policy
    from ruscarl_lib.train.checks import is_unsloth_class

    base = trl.GRPOTrainer
    res: dict = {"base": f"{base.__module__}.{base.__qualname__}", "import_s": round(import_s, 1),
                 "base_is_unsloth": is_unsloth_class(base)}
    if base.__name__ != "UnslothGRPOTrainer":
        res["error"] = "Unsloth's patch did not rebind trl.GRPOTrainer"
        return res
    _install_mode_stand_ins()
    model_dir = save_tiny_model(out / "model")
    examples = make_examples(6)

    # 1. scaffolds on: builds on Unsloth's class, trains, contract holds
    params = toy_params(model_dir, out, "on", max_steps=3, updates_per_step=2,
                        per_device_batch_size=2, kl_coef=0.05)
    on = run_training(params, train_examples=examples, reward_funcs=[keyword_reward],
                      trainer_cls=ContractProbeMixin)
    report = check_contract(on.trainer)
    record = json.loads((on.run_dir / "trainer.json").read_text())
    res["on"] = {"global_step": on.global_step, "trainer_base": record["base_class"],
                 "trainer_base_is_unsloth": record["base_is_unsloth"],
                 "live_contract": on.trainer.contract_report,
                 "contract": {"rollouts": report.rollouts, "scaffolded": report.scaffolded,
                              "loss_rows": report.loss_rows, "old_ref_rows": report.old_ref_rows},
                 "losses": [h["loss"] for h in on.trainer.state.log_history if "loss" in h]}

    # 2. scaffolds off vs Unsloth's stock trainer, same start
    off_params = toy_params(model_dir, out, "off", max_steps=2, kl_coef=0.05,
                            scaffold={"enabled": False})
    ours = run_training(off_params, train_examples=examples, reward_funcs=[keyword_reward],
                        trainer_cls=ContractProbeMixin)

    class StockProbe(base):
        def __init__(self, *a, **kw):
            self.gen_calls = []
            super().__init__(*a, **kw)

        def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, **kw):
            got = super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations, **kw)
            self.gen_calls.append(([tuple(p) for p in prompt_ids], [tuple(c) for c in got[0]]))
            return got

    # the same start as ours: the LoRA applied as run_training applies it over Unsloth's class
    policy = attach_lora_for(StockProbe, load_policy(off_params.train, seed=0, backend="transformers"), seed=0)
    stock = StockProbe(model=policy.model, reward_funcs=[keyword_reward],
                       args=build_grpo_config(off_params, out / "stock", world_size=1),
                       train_dataset=to_train_dataset(examples), processing_class=policy.tokenizer,
                       peft_config=policy.peft_config)
    stock.train()
    ours_gen = [(c["prompt_ids"], c["completion_ids"]) for c in ours.trainer.gen_calls if c["training"]]
    la = [h["loss"] for h in ours.trainer.state.log_history if "loss" in h]
    lb = [h["loss"] for h in stock.state.log_history if "loss" in h]
    a = {k: v for k, v in ours.trainer.model.state_dict().items() if "lora" in k}
    b = {k: v for k, v in stock.model.state_dict().items() if "lora" in k}
    same_keys = a.keys() == b.keys() and bool(a)
    res["lora_key_diff"] = {"ours_only": sorted(a.keys() - b.keys())[:4], "stock_only": sorted(b.keys() - a.keys())[:4],
                            "n_ours": len(a), "n_stock": len(b)}
    res["off"] = {
        "same_rollouts": ours_gen == stock.gen_calls,
        "losses_ours": la, "losses_stock": lb,
        "max_loss_diff": max((abs(x - y) for x, y in zip(la, lb)), default=None) if len(la) == len(lb) else None,
        "lora_keys_match": same_keys,
        "max_weight_diff": max(float((a[k] - b[k]).abs().max()) for k in a) if same_keys else None,
        "loss_tol": LOSS_TOL, "weight_tol": WEIGHT_TOL,
        "stock_class": f"{type(stock).__mro__[1].__module__}.{type(stock).__mro__[1].__qualname__}",
    }
    res["torch"] = torch.__version__
    res["trl"] = trl.__version__
    res["unsloth"] = getattr(unsloth, "__version__", None)
    return res


if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    result = main(out)
    print("LANE_RESULT " + json.dumps(result, default=str))
