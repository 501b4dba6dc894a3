"""What scaffolding costs per training step, next to what its extra prompt tokens alone cost.

Three arms of the same tiny-model GRPO run (same seed, data, steps and code path):
- off: `scaffold.enabled: false`, plain rubric GRPO;
- on: scaffolds at full strength on every step (constant schedule);
- floor: scaffolds off, but every generation prompt is lengthened with filler tokens to the
  mean scaffolded prompt length of the same RL step, so generation processes the same number of
  prompt tokens as the `on` arm with no padding at all (the loss, as in `on`, sees the clean
  prompt). floor/off is what the extra prompt tokens cost by themselves; on/floor is what the
  scaffolded batch pays on top (left-padding to the longest prompt, scaffold rendering).
  Evenly spread tokens are the cheapest layout of that many tokens (prefill attention grows
  with the square of a prompt's length), so the floor is a lower bound, not an exact target.

Completions are forced to exactly `--completion-tokens` tokens in every arm (EOS suppressed
until then), so the arms differ only in their prompts. Each repetition runs the three arms one
after the other, rotating their order; per arm the first step is dropped as warm-up and the
median of the rest taken. Torch runs on `--threads` threads (default 1: on a loaded machine
idle OpenMP threads spin and make both wall and CPU time erratic). Peak memory (JSON; in the summary on CUDA only) is the CUDA allocator peak, or
on CPU the process's resident high-water mark, which only grows across arms. Printed: per-repetition numbers (JSON), then ONE summary line with medians over
the repetitions and their [min, max]: step-time ratio on/off, floor/off, on/floor (goal: at
most 1.05), for wall time and for process CPU time (steadier on a shared machine).

    python benchmarks/train_overhead.py [--steps 8] [--reps 5] [--completion-tokens 16] [--threads 1]
        [--set rollout_buckets=1]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

N_EXAMPLES = 8
ARMS = ("off", "on", "floor")


def _peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_trainer_cls(targets: dict[int, int] | None):
    """A trainer with fixed-length completions that times training steps in CPU seconds.

    `targets` (RL step -> prompt tokens) lengthens every training generation prompt to that
    many tokens (the floor arm); None leaves prompts alone.
    """
    from ruscarl_lib.train.trainer_class import ScaffoldedGRPOTrainer

    class BenchTrainer(ScaffoldedGRPOTrainer):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            n = self.max_completion_length
            if self.use_vllm:  # vLLM reads its own sampling kwargs
                self.vllm_generation.generation_kwargs["min_tokens"] = n
            else:
                self.generation_config.min_new_tokens = n
                self.generation_kwargs["min_new_tokens"] = n
            self.cpu_step_times: list[float] = []
            self.generated_prompt_tokens: list[int] = []
            self._cpu = 0.0

        def training_step(self, model, inputs, num_items_in_batch):
            t0 = time.process_time()
            out = super().training_step(model, inputs, num_items_in_batch)
            self._cpu += time.process_time() - t0
            if self._step % self.current_gradient_accumulation_steps == 0:
                self.cpu_step_times.append(self._cpu)
                self._cpu = 0.0
            return out

        def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, **kw):
            if self.model.training:
                if targets is not None:
                    target = targets[self.rl_step_at(self.state.global_step)]
                    prompt_ids = [_lengthen(list(p), target) for p in prompt_ids]
                self.generated_prompt_tokens.extend(len(p) for p in prompt_ids)
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations, **kw)

    return BenchTrainer


def _lengthen(ids: list[int], target: int) -> list[int]:
    """`ids` with filler (its own tokens, cycled) in front, `target` tokens in all."""
    extra = target - len(ids)
    if extra <= 0:
        return ids
    return (ids * (extra // len(ids) + 1))[:extra] + ids


def run_arm(model_dir: Path, out_dir: Path, arm: str, steps: int, completion_tokens: int,
            targets: dict[int, int] | None = None, train: dict | None = None) -> dict:
    import torch

    from ruscarl_lib.train.run_folder import read_metrics, read_rollouts
    from ruscarl_lib.train.smoke_task import keyword_reward, make_examples, toy_params
    from ruscarl_lib.train.run import run_training

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    params = toy_params(
        model_dir, out_dir, arm,
        max_steps=steps, resume=False, max_completion_length=completion_tokens, **(train or {}),
        # a constant full-strength schedule: every step pays the scaffold's cost
        scaffold={"enabled": arm == "on", "step_decay": "constant"},
    )
    t0 = time.perf_counter()
    result = run_training(params, train_examples=make_examples(N_EXAMPLES), reward_funcs=[keyword_reward],
                          trainer_cls=bench_trainer_cls(targets if arm == "floor" else None))
    wall = time.perf_counter() - t0
    run_dir = out_dir / params.output.run_name
    m = read_metrics(run_dir)
    roll = read_rollouts(run_dir)
    wall_steps = list(m["step_time"])
    cpu_steps = list(result.trainer.cpu_step_times)
    gen_tokens = result.trainer.generated_prompt_tokens
    return {
        "arm": arm,
        "step_time_s": statistics.median(wall_steps[1:] or wall_steps),
        "cpu_step_time_s": statistics.median(cpu_steps[1:] or cpu_steps),
        "step_times_s": [round(t, 4) for t in wall_steps],
        "wall_s": round(wall, 2),
        "generation_prompt_tokens": statistics.mean(gen_tokens),
        "clean_prompt_tokens": float(roll["clean_prompt_tokens"].mean()),
        "completion_tokens": float(roll["completion_tokens"].mean()),
        "rollout_prompt_tokens_per_step": roll.groupby("rl_step")["rollout_prompt_tokens"].mean().round().astype(int).to_dict(),
        "peak_memory_mb": round(_peak_memory_mb()),
        "group_size": params.train.group_size,
        "prompts_per_step": params.train.prompts_per_step,
    }


def _stats(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def _fmt(values: list[float]) -> str:
    med, lo, hi = _stats(values)
    return f"{med:.2f} [{lo:.2f}, {hi:.2f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--reps", type=int, default=5, help="interleaved repetitions of the three arms")
    ap.add_argument("--completion-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--out", default=None, help="run folder (default: a temporary one)")
    ap.add_argument("--model", default=None, help="a saved model folder (default: build the tiny model)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="extra `train` keys for every arm, e.g. rollout_buckets=1")
    args = ap.parse_args()

    import torch

    from ruscarl_lib.models.tiny import save_tiny_model
    from ruscarl_lib.train.run import parse_overrides

    if args.threads:
        torch.set_num_threads(args.threads)
    train = {k.removeprefix("train."): v for k, v in parse_overrides(args.set).items()}
    out = Path(args.out or tempfile.mkdtemp(prefix="ruscarl-bench-"))
    model_dir = Path(args.model) if args.model else save_tiny_model(out / "tiny_model")
    # warm-up (imports, allocator, caches) and the floor's per-step targets: the scaffolded
    # prompt lengths are deterministic (seeded sampler and scaffold selection)
    probe = run_arm(model_dir, out / "warmup", "on", args.steps, args.completion_tokens, train=train)
    targets = {int(k): int(v) for k, v in probe["rollout_prompt_tokens_per_step"].items()}

    reps: list[dict[str, dict]] = []
    for r in range(args.reps):
        order = ARMS[r % 3:] + ARMS[: r % 3]
        rep = {arm: run_arm(model_dir, out / f"rep{r}", arm, args.steps, args.completion_tokens, targets, train)
               for arm in order}
        reps.append(rep)
        print(json.dumps({"rep": r, "order": order, **rep}), flush=True)

    def ratios(key: str, a: str, b: str) -> list[float]:
        return [rep[a][key] / rep[b][key] for rep in reps]

    first = reps[0]
    off_on_floor = "/".join(f"{statistics.median(rep[a]['step_time_s'] for rep in reps):.3f}" for a in ARMS)
    on_floor = ratios("step_time_s", "on", "floor")
    print(
        f"train_overhead: {Path(args.model).name if args.model else 'tiny model'}, {N_EXAMPLES} toy examples, G={first['on']['group_size']} x "
        f"{first['on']['prompts_per_step']} prompts per step, {args.steps} steps "
        f"(median of steps 2..{args.steps}), {args.reps} interleaved reps, threads={torch.get_num_threads()}, "
        f"{' '.join(args.set) or 'default train params'}; generation prompt tokens off/on/floor "
        f"{first['off']['generation_prompt_tokens']:.0f}/{first['on']['generation_prompt_tokens']:.0f}/"
        f"{first['floor']['generation_prompt_tokens']:.0f}, completion tokens {first['on']['completion_tokens']:.0f} "
        f"(fixed); step time off/on/floor {off_on_floor}s; median [min, max] over reps: "
        f"ratio on/off {_fmt(ratios('step_time_s', 'on', 'off'))}, floor {_fmt(ratios('step_time_s', 'floor', 'off'))}, "
        f"ratio/floor {_fmt(on_floor)} (goal <= 1.05: {'met' if statistics.median(on_floor) <= 1.05 else 'NOT met'}); "
        f"CPU time: ratio {_fmt(ratios('cpu_step_time_s', 'on', 'off'))}, "
        f"floor {_fmt(ratios('cpu_step_time_s', 'floor', 'off'))}, "
        f"ratio/floor {_fmt(ratios('cpu_step_time_s', 'on', 'floor'))}"
        + (f"; peak CUDA memory off/on/floor {'/'.join(str(first[a]['peak_memory_mb']) for a in ARMS)} MB"
           if torch.cuda.is_available() else ""),
        flush=True,
    )


if __name__ == "__main__":
    main()
