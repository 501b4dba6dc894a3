"""Entry point for the two-process test: `accelerate launch ... mp_train_script.py MODEL OUT RUN`.

Not a test module (pytest collects `test_*.py` only). One prompt per RL step and G=4, so on
two processes every group is split between the ranks.
"""

import json
import sys
from pathlib import Path

from ruscarl_lib.train.run import run_training
from ruscarl_lib.train.smoke_task import keyword_reward, make_examples
from ruscarl_lib.train.smoke_task import toy_params as tiny_params


def main() -> None:
    model_dir, out_dir, run_name = sys.argv[1:4]
    params = tiny_params(model_dir, out_dir, run_name, prompts_per_step=1, per_device_batch_size=2,
                         max_steps=3)
    result = run_training(params, train_examples=make_examples(4), reward_funcs=[keyword_reward])
    trainer = result.trainer
    if trainer.accelerator.is_main_process:
        info = {"world_size": trainer.accelerator.num_processes,
                "gradient_accumulation_steps": trainer.args.gradient_accumulation_steps}
        (Path(out_dir) / run_name / "world.json").write_text(json.dumps(info))


if __name__ == "__main__":
    main()
