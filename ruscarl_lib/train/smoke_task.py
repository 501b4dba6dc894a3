"""A toy rubric task for smoke runs, benchmarks and tests of the training loop.

Six keywords, short "headache" conversations, rubrics of 4 to 6 criteria (one negative) that
name a keyword each. `keyword_reward` is a dependency-free TRL reward function; the
`rule_examples` variant tags the same criteria for the library's rule judge, so the real
`RubricReward` can grade them without any model. Nothing here is meant to be learnable in a
meaningful way; it exercises the machinery.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ruscarl_lib.data.rubric import Criterion, RubricExample
from ruscarl_lib.params import Params

KEYWORDS = ["rest", "water", "doctor", "fever", "sleep", "pain"]


def make_examples(n: int = 6) -> list[RubricExample]:
    """Small conversations whose rubrics name one keyword per criterion."""
    out = []
    for i in range(n):
        k = 4 + i % 3
        rubric = [
            Criterion(f"The response mentions {w}", float(5 - j), (f"keyword:{w}",))
            for j, w in enumerate(KEYWORDS[: k - 1])
        ]
        rubric.append(Criterion("The response suggests antibiotics", -3.0, ("keyword:antibiotics",)))
        out.append(
            RubricExample(
                id=f"ex{i}",
                messages=[{"role": "user", "content": f"I have a headache ({i}). What should I do?"}],
                rubric=rubric,
            )
        )
    return out


def rule_examples(n: int = 6) -> list[RubricExample]:
    """The same examples with criteria checked by the `contains` rule."""
    out = []
    for ex in make_examples(n):
        rubric = [
            Criterion(c.text, c.points, ("verifier:rule", "function:contains", f"parameters:{c.tags[0].split(':', 1)[1]}"))
            for c in ex.rubric
        ]
        out.append(RubricExample(id=ex.id, messages=ex.messages, rubric=rubric))
    return out


def keyword_reward(prompts, completions, rubric, log_extra=None, **kwargs: Any) -> list[float]:
    """A TRL reward: a criterion is met when its keyword occurs in the completion.

    Logs the per-criterion verdicts through TRL's `log_extra` as the `verdicts` column.
    """
    scores, verdicts = [], []
    for completion, criteria in zip(completions, rubric):
        text = completion[0]["content"] if isinstance(completion, list) else completion
        met = [any(t.split(":", 1)[1] in text for t in c["tags"] if ":" in t) for c in criteria]
        positive = sum(c["points"] for c in criteria if c["points"] > 0)
        scores.append(sum(c["points"] for c, m in zip(criteria, met) if m) / positive)
        verdicts.append(met)
    if log_extra is not None:
        log_extra("verdicts", verdicts)
    return scores


def toy_params(model_dir: str | Path, out_dir: str | Path, run_name: str, **train: Any) -> Params:
    """Params for a few seconds of training of the tiny model on the toy task.

    `train` overrides keys of the `train` section; `scaffold=` a dict of `scaffold` keys.
    """
    scaffold = train.pop("scaffold", {})
    base: dict[str, Any] = {
        "model": str(model_dir),
        "backend": "transformers",
        "group_size": 4,
        "prompts_per_step": 2,
        "per_device_batch_size": 4,
        "max_steps": 3,
        "save_steps": 100,
        "max_completion_length": 6,
        "max_prompt_length": 128,
        "gradient_checkpointing": False,
        "learning_rate": 1e-3,
        "kl_coef": 0.0,
        "lora_r": 4,
        "lora_alpha": 8,
        "lora_target_modules": ["q_proj", "v_proj"],
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": 0,
    }
    base.update(train)
    return Params.model_validate(
        {
            "output": {"dir": str(out_dir), "run_name": run_name},
            "train": base,
            "scaffold": {"step_decay": "linear", **scaffold},
            "seed": 0,
        }
    )
