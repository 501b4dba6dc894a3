"""The rubric reward as a TRL 1.15 GRPOTrainer reward function (METHOD.md section 3).

TRL calls reward functions as

    reward(prompts=[...], completions=[...], completion_ids=[...], trainer_state=TrainerState,
           log_extra=fn(column, values), log_metric=fn(name, value), **dataset_columns)

with one entry per completion in every list (dataset columns are repeated per generation),
and awaits the call when `__call__` is a coroutine, on its own event loop thread, gathered
with other async reward functions. `RubricReward` is such an async callable.

Dataset columns it reads (names configurable):
- `rubric`: the criteria, as a list of `{"criterion": str, "points": number, "tags": [str]}`
  (the project record, `Criterion.to_dict()`), or the same list as a JSON string (safest with
  HF datasets, whose Arrow columns would otherwise merge dict keys across rows), or a list of
  `Criterion`. Tags may also be a `{key: value}` dict.
- `judge_prompt` (optional): the clean conversation (list of `{role, content}` messages, or a
  JSON string of it). The grader must never see a scaffold (METHOD.md section 3); when
  training puts the scaffold into the `prompt` column, provide `judge_prompt`. Without it the
  `prompts` argument is used (a plain string becomes one user message).
- `example_id` (optional): carried into the kept verdicts.

Completions may be plain strings or conversational (a list of assistant messages).
The reward is `scoring.example_score` under the params' training failure policy
(`judge.train_failure_policy`, default `worst_case`: a response that makes the judge fail,
for instance by being too long for its context, keeps its penalties); a completion that
cannot be scored (no positive points left) gets None, which TRL treats as "no reward". A
`JudgeFailureGuard` watches the share of failed verdicts per call (one call per RL step), and
`train.run.run_training` stops the run, checkpoint kept, when it stays above
`judge.max_failure_rate` for `judge.failure_patience` steps: scores made mostly of failure
policy are not a training signal.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ruscarl_lib.data.rubric import Criterion
from ruscarl_lib.data.tags import normalize_tags
from ruscarl_lib.judges import Judge, JudgeStats, Verdict, build_judge, strip_think
from ruscarl_lib.judges.failure_policy import check_policy
from ruscarl_lib.judges.prompts import message_text
from ruscarl_lib.judges.scoring import example_score
from ruscarl_lib.judges.verdict import GradingItem
from ruscarl_lib.params import JudgeParams, Params

log = logging.getLogger(__name__)


@dataclass
class CompletionVerdicts:
    """Everything decided about one completion, kept for later analysis."""

    step: int | None
    index: int
    example_id: str | None
    response: str
    criteria: list[Criterion]
    verdicts: list[Verdict]
    score: float
    failure_policy: str

    @property
    def n_failed(self) -> int:
        return sum(v.failed for v in self.verdicts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "index": self.index,
            "example_id": self.example_id,
            "response": self.response,
            "score": None if math.isnan(self.score) else self.score,
            "failure_policy": self.failure_policy,
            "criteria": [c.to_dict() for c in self.criteria],
            "verdicts": [v.to_dict() for v in self.verdicts],
        }


class VerdictLog:
    """A sink appending one JSON line per completion: `reward.add_sink(VerdictLog(path))`."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)

    def __call__(self, batch: list[CompletionVerdicts]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            for rec in batch:
                f.write(json.dumps(rec.to_dict(), ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------------------------
# Column decoding
# --------------------------------------------------------------------------------------------


def criteria_from_column(value: Any) -> list[Criterion]:
    """The criteria of one row's rubric column (see module docstring for the formats)."""
    if isinstance(value, str):
        value = json.loads(value)
    if hasattr(value, "tolist"):
        value = value.tolist()
    out = []
    for c in value:
        if isinstance(c, Criterion):
            out.append(c)
        elif isinstance(c, dict):
            text = c.get("criterion", c.get("text"))
            if not isinstance(text, str) or "points" not in c:
                raise ValueError(f"rubric entry needs 'criterion' text and 'points': {c!r}")
            out.append(Criterion(text=text, points=float(c["points"]), tags=normalize_tags(c.get("tags"))))
        else:
            raise ValueError(f"cannot read a rubric entry of type {type(c).__name__}")
    return out


def conversation_from_value(value: Any) -> list[dict[str, Any]]:
    """Messages from a conversation cell: a message list, its JSON, or a plain prompt string."""
    if isinstance(value, str):
        stripped = value.lstrip()
        if stripped.startswith("["):
            try:
                parsed = json.loads(value)
                if isinstance(parsed, list) and all(isinstance(m, dict) and "role" in m for m in parsed):
                    return parsed
            except json.JSONDecodeError:
                pass
        return [{"role": "user", "content": value}]
    if hasattr(value, "tolist"):
        value = value.tolist()
    return [dict(m) for m in value]


def response_text(completion: Any) -> str:
    """The text to grade: a plain string, or the assistant content of a conversational completion."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    parts = [message_text(m.get("content")) for m in completion if m.get("role", "assistant") == "assistant"]
    return "\n".join(p for p in parts if p)


# --------------------------------------------------------------------------------------------
# The reward function
# --------------------------------------------------------------------------------------------


class JudgeFailureError(RuntimeError):
    """The judge failed on too many criteria for too many consecutive training steps."""


class JudgeFailureGuard:
    """Counts consecutive reward calls whose share of failed verdicts exceeds `max_rate`;
    `tripped` holds the reason once it reached `patience` (a good call resets the count)."""

    def __init__(self, max_rate: float, patience: int) -> None:
        self.max_rate = float(max_rate)
        self.patience = int(patience)
        self.streak = 0
        self.rates: list[float] = []
        self.tripped: str | None = None

    def update(self, n_failed: int, n_criteria: int, step: Any = None, kinds: str = "") -> None:
        rate = n_failed / n_criteria if n_criteria else 0.0
        self.rates.append(rate)
        self.streak = self.streak + 1 if rate > self.max_rate else 0
        if self.streak >= self.patience and self.tripped is None:
            recent = ", ".join(f"{r:.0%}" for r in self.rates[-self.patience:])
            self.tripped = (
                f"the judge failed on more than {self.max_rate:.0%} of criteria for {self.patience} "
                f"consecutive steps (last: {recent}; at step {step}{'; ' + kinds if kinds else ''}). "
                "Check the judge (server up? model loaded? criteria it can grade: the rule judge grades "
                "only verifier:rule criteria), or raise judge.max_failure_rate / judge.failure_patience."
            )


class RubricReward:
    """Async TRL reward: grade each completion against its row's rubric, return the score.

    After each call, `last_batch` holds the per-criterion verdicts and every sink added with
    `add_sink` receives them; judge metrics for the call go to TRL's `log_metric` under
    `metric_prefix` (calls, cache hits, failures by kind, tokens, latency, wall time) and
    failed criteria are also logged as a warning. `judge.stats` accumulates over the run.
    """

    def __init__(
        self,
        judge: Judge | JudgeParams,
        *,
        failure_policy: str | None = None,
        rubric_column: str = "rubric",
        conversation_column: str = "judge_prompt",
        id_column: str = "example_id",
        clean_conversation: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] | None = None,
        strip_response_think: bool | None = None,
        progress: bool = False,
        metric_prefix: str = "judge/",
        name: str = "rubric_reward",
    ) -> None:
        params = judge if isinstance(judge, JudgeParams) else getattr(judge, "params", None)
        self.judge: Judge = build_judge(judge) if isinstance(judge, JudgeParams) else judge
        policy = failure_policy or (params.train_failure_policy if params is not None else "worst_case")
        self.failure_guard = (JudgeFailureGuard(params.max_failure_rate, params.failure_patience)
                              if params is not None else None)
        check_policy(policy)
        self.failure_policy = policy
        self.rubric_column = rubric_column
        self.conversation_column = conversation_column
        self.id_column = id_column
        self.clean_conversation = clean_conversation
        if strip_response_think is None:
            strip_response_think = params.strip_response_think if params is not None else True
        self.strip_response_think = strip_response_think
        self.progress = progress
        self.metric_prefix = metric_prefix
        self.__name__ = name  # TRL names the reward column after this
        self.last_batch: list[CompletionVerdicts] = []
        self.last_stats: JudgeStats | None = None
        self.sinks: list[Callable[[list[CompletionVerdicts]], None]] = []

    @property
    def stats(self) -> JudgeStats:
        """Judge accounting for the whole run so far."""
        return self.judge.stats

    def add_sink(self, sink: Callable[[list[CompletionVerdicts]], None]) -> None:
        """Call `sink(batch)` after every reward call (e.g. `VerdictLog(path)`)."""
        self.sinks.append(sink)

    def _items(self, prompts: Sequence[Any], completions: Sequence[Any], columns: dict[str, Any]) -> list[GradingItem]:
        if self.rubric_column not in columns:
            raise KeyError(
                f"reward needs the dataset column {self.rubric_column!r} (the rubric); got columns {sorted(columns)}"
            )
        rubrics = columns[self.rubric_column]
        convs = columns.get(self.conversation_column) or [None] * len(prompts)
        items = []
        for prompt, conv_value, completion, rubric in zip(prompts, convs, completions, rubrics, strict=True):
            conv = conversation_from_value(prompt if conv_value is None else conv_value)
            if self.clean_conversation is not None:
                conv = self.clean_conversation(conv)
            text = response_text(completion)
            if self.strip_response_think:
                text = strip_think(text)
            items.append(GradingItem(conv, text, criteria_from_column(rubric)))
        return items

    async def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Any] | None = None,
        trainer_state: Any = None,
        log_metric: Callable[[str, float], None] | None = None,
        log_extra: Callable[[str, list], None] | None = None,
        **columns: Any,
    ) -> list[float | None]:
        items = self._items(prompts, completions, columns)
        step = getattr(trainer_state, "global_step", None)
        before = self.judge.stats.copy()
        verdicts = await self.judge.grade_many(items, progress="judge" if self.progress else False)
        step_stats = self.judge.stats.since(before)
        self.last_stats = step_stats

        ids = columns.get(self.id_column)
        batch: list[CompletionVerdicts] = []
        rewards: list[float | None] = []
        for n, (it, vs) in enumerate(zip(items, verdicts)):
            score = example_score([c.points for c in it.criteria], [v.met for v in vs], self.failure_policy)
            rewards.append(None if math.isnan(score) else score)
            batch.append(CompletionVerdicts(
                step=step, index=n, example_id=None if ids is None else str(ids[n]), response=it.response,
                criteria=list(it.criteria), verdicts=vs, score=score, failure_policy=self.failure_policy,
            ))
        self.last_batch = batch

        n_failed = sum(r.n_failed for r in batch)
        n_unscored = sum(r is None for r in rewards)
        kinds = ", ".join(f"{k}={v}" for k, v in sorted(step_stats.failures.items()))
        if self.failure_guard is not None:
            self.failure_guard.update(n_failed, sum(len(it.criteria) for it in items), step, kinds)
        if n_failed:
            log.warning(
                "judge: %d of %d criteria failed (%s) at step %s; scored with failure_policy=%s",
                n_failed, step_stats.criteria, kinds, step, self.failure_policy,
            )
        if log_metric is not None:
            for name, value in step_stats.as_metrics(self.metric_prefix).items():
                log_metric(name, value)
            log_metric(self.metric_prefix + "unscored_completions", float(n_unscored))
        if log_extra is not None:
            log_extra("judge_verdicts", ["".join("?" if v.failed else "Y" if v.met else "N" for v in r.verdicts) for r in batch])
            log_extra("judge_failed", [r.n_failed for r in batch])
        for sink in self.sinks:
            try:
                sink(batch)
            except Exception:  # analysis must not stop training
                log.exception("verdict sink %r failed", sink)
        return rewards


def rubric_reward(params: JudgeParams, **kwargs: Any) -> RubricReward:
    """A RubricReward with the judge that `params` describe (same as `RubricReward(params)`)."""
    return RubricReward(params, **kwargs)


class OverlongPenalty:
    """DAPO's soft overlong punishment (Yu et al. 2025) as a TRL reward function.

    Why: a rubric rewards content, so nothing in it stops an answer from growing a tail of
    filler; masking truncated answers (`mask_truncated_completions`) then removes the only
    signal against reaching the cap. This term costs nothing up to `max_length - buffer` tokens
    and falls linearly to `-penalty` at the cap, so answers drifting longer are pushed back before
    they are cut. It is a second reward function: TRL adds it to the rubric reward before the
    group advantages, and the rollout table keeps both columns.
    """

    def __init__(self, max_length: int, buffer: int, penalty: float = 1.0) -> None:
        if not 0 < buffer < max_length:
            raise ValueError(f"overlong buffer must lie in (0, {max_length}), got {buffer}")
        self.max_length, self.buffer, self.penalty = int(max_length), int(buffer), float(penalty)
        self.__name__ = "overlong_penalty"  # TRL names the reward column after this

    def value(self, n_tokens: int) -> float:
        over = n_tokens - (self.max_length - self.buffer)
        return 0.0 if over <= 0 else -self.penalty * min(1.0, over / self.buffer)

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], completion_ids: Sequence[Sequence[int]],
                 **kwargs: Any) -> list[float]:
        return [self.value(len(ids)) for ids in completion_ids]


def with_length_penalty(reward_funcs: Sequence[Callable[..., list[float]]], tp: Any) -> list[Callable[..., list[float]]]:
    """`reward_funcs` plus the overlong penalty when `train.overlong_buffer` is set."""
    funcs = list(reward_funcs)
    if tp.overlong_buffer > 0:
        funcs.append(OverlongPenalty(tp.max_completion_length, tp.overlong_buffer, tp.overlong_penalty))
    return funcs


def default_reward_funcs(params: Params, servers: contextlib.ExitStack | None = None,
                         log_dir: Path | None = None) -> list[Callable[..., list[float]]]:
    """The rubric reward configured by the `judge` section.

    It grades the `prompts` TRL passes, which the scaffolded trainer keeps clean (the scaffold
    only reaches generation), reads the `rubric` and `example_id` columns, logs judge
    accounting through `log_metric` (into metrics.jsonl) and per-criterion verdicts through
    `log_extra` (into the rollout table). With `judge.server.start` a local vLLM judge is
    started into `servers` (stopped when it closes), logging to `log_dir`.
    """
    if params.judge.kind == "openai" and params.judge.server.start:
        if servers is None:
            raise ValueError("judge.server.start needs an ExitStack to hold the server")
        from ruscarl_lib.judges.server import served_judge

        judge_params, server = servers.enter_context(served_judge(params.judge, log_dir or Path(".")))
        reward = rubric_reward(judge_params)
        server.attach(reward.judge)
        return [reward]
    return [rubric_reward(params.judge)]
