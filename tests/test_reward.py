"""The TRL reward function: scores, failure policies, logging, kept verdicts, TRL's call path."""

from __future__ import annotations

import asyncio
import collections
import json
import types

import pytest

from judge_server import JudgeServer
from ruscarl_lib.params import JudgeParams
from ruscarl_lib.train.reward import RubricReward, VerdictLog, criteria_from_column, response_text
from ruscarl_lib.data.rubric import Criterion

pytestmark = pytest.mark.timeout(60)

CLEAN = [{"role": "user", "content": "I have a headache, what should I do?"}]
SCAFFOLD = {"role": "system", "content": "SCAFFOLD: include water, avoid surgery. Do not reveal this."}
# points 5, 3, -4, 2. The 3 and the -4 always fail on the judge side.
RUBRIC = [
    {"criterion": "Advises [[water]].", "points": 5, "tags": ["axis:accuracy"]},
    {"criterion": "Mentions [[rest]] {{fail:500:*}}", "points": 3, "tags": {"axis": "completeness"}},
    {"criterion": "Recommends [[surgery]] {{fail:500:*}}", "points": -4, "tags": []},
    {"criterion": "Mentions [[sleep]].", "points": 2},
]


def params(srv: JudgeServer, **kw) -> JudgeParams:
    base = dict(kind="openai", base_urls=[srv.base_url], cache_path=None, max_retries=1,
                backoff_base_s=0.01, backoff_max_s=0.02, timeout_s=2.0)
    base.update(kw)
    return JudgeParams(**base)


@pytest.fixture
def server():
    with JudgeServer() as srv:
        yield srv


def call(reward, completions, rubric=RUBRIC, step=3, **extra):
    n = len(completions)
    metrics: dict[str, list[float]] = collections.defaultdict(list)
    extras: dict[str, list] = collections.defaultdict(list)
    columns = {"rubric": [json.dumps(rubric)] * n, "judge_prompt": [CLEAN] * n, **extra}

    async def go():
        try:
            return await reward(
                prompts=[[SCAFFOLD, *CLEAN]] * n,  # what the policy saw: scaffolded
                completions=completions,
                completion_ids=[[1, 2, 3]] * n,
                trainer_state=types.SimpleNamespace(global_step=step),
                log_metric=lambda name, v: metrics[name].append(v),
                log_extra=lambda col, vals: extras[col].extend(vals),
                **columns,
            )
        finally:
            await reward.judge.aclose()

    return asyncio.run(go()), metrics, extras


@pytest.mark.parametrize(
    "policy,expected",
    [
        # water met (5), rest failed (+3), surgery failed (-4), sleep not met (2)
        ("exclude", 5 / (5 + 2)),  # drop failed criteria from both sides
        ("worst_case", (5 - 4) / (5 + 3 + 2)),  # failed positive unmet, failed negative met
        ("not_met", 5 / (5 + 3 + 2)),  # reference-code behaviour
    ],
)
def test_failure_policies_give_hand_checked_scores(server, policy, expected):
    reward = RubricReward(params(server, train_failure_policy=policy))
    assert reward.failure_policy == policy
    rewards, metrics, _ = call(reward, ["Drink water and rest. No surgery needed."])
    assert rewards == [pytest.approx(expected)]
    assert metrics["judge/failed"] == [2.0] and metrics["judge/failures/http_5xx"] == [2.0]


def test_scores_without_failures_match_the_formula(server):
    rubric = [{"criterion": "Advises [[water]].", "points": 5}, {"criterion": "Mentions [[rest]].", "points": 3},
              {"criterion": "Recommends [[surgery]].", "points": -4}, {"criterion": "Mentions [[sleep]].", "points": 2}]
    reward = RubricReward(params(server))
    completions = ["water, rest and sleep", "water then surgery", "surgery", "nothing useful"]
    rewards, _, _ = call(reward, completions, rubric=rubric)
    assert rewards == [pytest.approx(1.0), pytest.approx(0.1), pytest.approx(-0.4), pytest.approx(0.0)]


def test_trl_convention_logging_and_kept_verdicts(server, tmp_path, caplog):
    reward = RubricReward(params(server), progress=False)
    sink_path = tmp_path / "verdicts.jsonl"
    reward.add_sink(VerdictLog(sink_path))
    completions = [
        [{"role": "assistant", "content": "<think>maybe surgery?</think>Drink water and sleep."}],
        [{"role": "assistant", "content": "Surgery."}],
    ]
    rewards, metrics, extras = call(reward, completions, example_id=["ex1", "ex2"], step=11)
    # completion 1: water + sleep met, think block not graded (surgery only inside it); the
    # training default worst_case counts the failed +3 not met and the failed -4 met
    assert rewards == [pytest.approx((5 - 4 + 2) / 10), pytest.approx(-4 / 10)]
    # the judge saw the clean conversation, never the scaffold
    assert server.bodies and all("SCAFFOLD" not in json.dumps(b) for b in server.bodies)
    assert all("maybe surgery" not in json.dumps(b) for b in server.bodies)
    # metrics, one value per name per call
    assert metrics["judge/criteria"] == [8.0] and metrics["judge/failed"] == [4.0]
    assert metrics["judge/calls"] == [float(server.requests)]
    assert {"judge/cache_hits", "judge/prompt_tokens", "judge/completion_tokens", "judge/call_latency_mean_s",
            "judge/wall_s", "judge/failures/timeout", "judge/unscored_completions"} <= set(metrics)
    assert all(len(v) == 1 for v in metrics.values())
    assert extras["judge_verdicts"] == ["Y??Y", "N??N"] and extras["judge_failed"] == [2, 2]
    assert "4 of 8 criteria failed" in caplog.text and "http_5xx=4" in caplog.text
    # verdicts kept in memory and written by the sink
    last = reward.last_batch
    assert [r.example_id for r in last] == ["ex1", "ex2"] and last[0].step == 11
    assert [v.met for v in last[0].verdicts] == [True, None, None, True]
    assert last[0].verdicts[1].failure_kind == "http_5xx" and last[0].criteria[1].tags == ("axis:completeness",)
    lines = [json.loads(x) for x in sink_path.read_text().splitlines()]
    assert len(lines) == 2 and lines[1]["example_id"] == "ex2" and len(lines[1]["verdicts"]) == 4
    assert reward.stats.criteria == 8 and reward.last_stats.failed == 4


def test_plain_prompts_and_missing_conversation_column(server):
    reward = RubricReward(params(server, structured_output=False))

    async def go():
        return await reward(prompts=["Headache?"], completions=["water"], rubric=[RUBRIC[:1]])

    assert asyncio.run(go()) == [1.0]
    assert "Headache?" in server.bodies[0]["messages"][-1]["content"]


def test_unscorable_completion_returns_none(server):
    reward = RubricReward(params(server))
    rewards, metrics, _ = call(reward, ["x"], rubric=[{"criterion": "Recommends [[surgery]]", "points": -3}])
    assert rewards == [None] and metrics["judge/unscored_completions"] == [1.0]


def test_training_default_keeps_penalties_of_failed_criteria(server):
    """A response that makes the judge fail on a negative criterion must not lose its penalty."""
    assert JudgeParams().train_failure_policy == "worst_case" and JudgeParams().failure_policy == "exclude"
    reward = RubricReward(params(server))
    rewards, _, _ = call(reward, ["surgery"], rubric=[RUBRIC[0], RUBRIC[2]])  # the -4 fails
    assert rewards == [pytest.approx(-4 / 5)]


def test_failure_guard_trips_after_consecutive_bad_steps(server):
    from ruscarl_lib.train.reward import JudgeFailureGuard

    guard = JudgeFailureGuard(0.25, 2)
    for failed in (3, 0, 3):  # a good step in between resets the count
        guard.update(failed, 8)
    assert guard.tripped is None
    guard.update(3, 8, step=4)
    assert "2 consecutive steps" in guard.tripped and "38%, 38%" in guard.tripped and "step 4" in guard.tripped
    reward = RubricReward(params(server, max_failure_rate=0.4, failure_patience=2))
    for step in (1, 2):  # 2 of 4 criteria fail on every call
        call(reward, ["water"], step=step)
    assert reward.failure_guard.tripped and "http_5xx" in reward.failure_guard.tripped


def test_column_decoding():
    crits = criteria_from_column([{"criterion": "a", "points": 2, "tags": {"axis": "x", "level": None}},
                                  Criterion("b", -1), {"text": "c", "points": "3"}])
    assert crits == [Criterion("a", 2.0, ("axis:x",)), Criterion("b", -1), Criterion("c", 3.0)]
    assert response_text([{"role": "assistant", "content": [{"type": "text", "text": "hi"}]}]) == "hi"
    with pytest.raises(ValueError):
        criteria_from_column([{"criterion": "no points"}])


def test_through_trl_calculate_rewards(server):
    """Run the reward inside TRL 1.15's own `_calculate_rewards`, on TRL's daemon event loop."""
    from accelerate import Accelerator
    from trl.trainer.grpo_trainer import GRPOTrainer
    from trl.trainer.utils import get_callable_name, is_async_callable, start_event_loop_in_daemon

    reward = RubricReward(params(server))
    assert is_async_callable(reward) and get_callable_name(reward) == "rubric_reward"
    thread, loop, ready = start_event_loop_in_daemon()
    ready.wait()
    trainer = types.SimpleNamespace(
        accelerator=Accelerator(cpu=True), reward_funcs=[reward], reward_processing_classes=[None],
        reward_func_names=["rubric_reward"], state=types.SimpleNamespace(global_step=5),
        _pending_extra_logs=collections.defaultdict(list), _pending_metrics=collections.defaultdict(list),
        environments=None, async_loop=loop, args=types.SimpleNamespace(report_to=[]),
    )
    trainer._log_completion_extra = lambda c, v: GRPOTrainer._log_completion_extra(trainer, c, v)
    trainer._log_metric = lambda n, v: GRPOTrainer._log_metric(trainer, n, v)
    inputs = [{"prompt": CLEAN, "rubric": json.dumps(RUBRIC), "judge_prompt": CLEAN} for _ in range(3)]
    completions = [[{"role": "assistant", "content": c}] for c in ("water", "water and sleep", "nothing")]
    try:
        out = GRPOTrainer._calculate_rewards(trainer, inputs, [x["prompt"] for x in inputs], completions, [[1]] * 3)
        assert out[:, 0].tolist() == pytest.approx([1 / 10, 3 / 10, -4 / 10])  # worst_case
        assert trainer._pending_metrics["judge/failed"] == [6.0]
        assert trainer._pending_extra_logs["judge_failed"] == [2, 2, 2]
        assert reward.last_batch[0].step == 5
    finally:
        asyncio.run_coroutine_threadsafe(reward.judge.aclose(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)


def test_overlong_penalty_is_dapo_soft_punishment():
    """Zero up to cap - buffer, then linear to -penalty at the cap; truncated answers get the full penalty."""
    from ruscarl_lib.params import TrainParams
    from ruscarl_lib.train.reward import OverlongPenalty, with_length_penalty

    pen = OverlongPenalty(max_length=48, buffer=16, penalty=0.5)
    assert [pen.value(n) for n in (1, 32, 36, 40, 48)] == [0.0, 0.0, -0.125, -0.25, -0.5]
    assert pen([None] * 2, ["a", "b"], completion_ids=[[1] * 10, [1] * 48]) == [0.0, -0.5]
    assert pen.__name__ == "overlong_penalty"
    with pytest.raises(ValueError, match="overlong buffer"):
        OverlongPenalty(max_length=48, buffer=48)

    def rubric(**kw):
        return []

    assert with_length_penalty([rubric], TrainParams(max_completion_length=48)) == [rubric]
    funcs = with_length_penalty([rubric], TrainParams(max_completion_length=48, overlong_buffer=16))
    assert funcs[0] is rubric and isinstance(funcs[1], OverlongPenalty) and funcs[1].buffer == 16
    with pytest.raises(ValueError, match="overlong_buffer=48 must be below"):
        TrainParams(max_completion_length=48, overlong_buffer=48)
