"""CPU sandbox: a synthetic rubric world and a tiny warm-started policy that show the
exploration bottleneck (METHOD.md section 8) without a GPU or any download.

    from ruscarl_lib.sandbox import build_world, ensure_policy, bottleneck_report
    world = build_world(n_conditions=16, conditions_per_task=2, seed=0)
    policy = ensure_policy(world)            # cached under outputs/sandbox/policy-<key>/
    print(bottleneck_report(policy, world).summary())
"""

from ruscarl_lib.sandbox.bottleneck import BottleneckReport, bottleneck_report, group_stats
from ruscarl_lib.sandbox.evaluate import SANDBOX_SAMPLING, grade_response, sample_and_grade
from ruscarl_lib.sandbox.policy import (
    PolicyConfig,
    SandboxPolicy,
    build_word_tokenizer,
    completion_logprob,
    ensure_policy,
    load_sandbox_policy,
    policy_dir,
    policy_key,
)
from ruscarl_lib.sandbox.sft_data import SFTDataConfig, sft_conversations
from ruscarl_lib.sandbox.vocabulary import Condition
from ruscarl_lib.sandbox.world import World, WorldConfig, build_world
from ruscarl_lib.sandbox.criteria import rule_phrase, rule_tags

__all__ = [
    "BottleneckReport",
    "SANDBOX_SAMPLING",
    "Condition",
    "PolicyConfig",
    "SFTDataConfig",
    "SandboxPolicy",
    "World",
    "WorldConfig",
    "bottleneck_report",
    "build_word_tokenizer",
    "build_world",
    "completion_logprob",
    "ensure_policy",
    "grade_response",
    "group_stats",
    "load_sandbox_policy",
    "policy_dir",
    "policy_key",
    "rule_phrase",
    "rule_tags",
    "sample_and_grade",
    "sft_conversations",
]
