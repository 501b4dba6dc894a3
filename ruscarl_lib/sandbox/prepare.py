"""Turn a params file's `sandbox` section into ordinary project files.

The training and evaluation notebooks know nothing about the sandbox: they read a dataset
path, a model folder and a judge kind from params. This step writes the world's splits as
project JSONL, builds (or reuses) the warm-started policy, and writes a params file that points
at them, so the sandbox runs through exactly the code path a HealthBench run uses.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ruscarl_lib.data.write import write_jsonl
from ruscarl_lib.params import Params, ParamsError, save_params
from ruscarl_lib.sandbox.policy import PolicyConfig, SandboxPolicy, ensure_policy
from ruscarl_lib.sandbox.world import World, WorldConfig, build_world


@dataclass
class SandboxFiles:
    world: World
    policy: SandboxPolicy
    train_path: Path
    heldout_path: Path
    validation_path: Path
    params_path: Path
    params: Params


def _checked(cls: type, raw: dict[str, Any], section: str) -> dict[str, Any]:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ParamsError(f"sandbox.{section}: unknown key(s) {unknown}; known: {sorted(known)}")
    return dict(raw)


def world_config(params: Params) -> WorldConfig:
    return WorldConfig(**_checked(WorldConfig, params.sandbox.world, "world"))


def policy_config(params: Params) -> PolicyConfig:
    return PolicyConfig.from_dict(_checked(PolicyConfig, params.sandbox.policy, "policy"))


def prepare_sandbox(params: Params, out_dir: str | Path) -> SandboxFiles:
    """Write `train.jsonl`, `validation.jsonl`, `heldout.jsonl` and `sandbox_params.yaml` under
    `out_dir`; ensure the policy.

    The written params train on the training split with the rule judge and evaluate on the
    held-out split (unseen condition combinations). The policy is cached by its config under
    `sandbox.cache_dir`, so a second call reuses it.
    """
    out = Path(out_dir)
    world = build_world(world_config(params))
    policy = ensure_policy(world, policy_config(params), root=params.sandbox.cache_dir)
    train_path = write_jsonl(world.train, out / "train.jsonl")
    heldout_path = write_jsonl(world.heldout, out / "heldout.jsonl")
    validation_path = write_jsonl(world.validation, out / "validation.jsonl")
    ready = params.model_copy(deep=True)
    ready.data.path = str(train_path)
    ready.data.format = "ruscarl_jsonl"
    ready.train.model = str(policy.path)
    ready.train.backend = "transformers"
    ready.eval.data_path = str(heldout_path)
    ready.judge.kind = "rule"
    params_path = save_params(ready, out / "sandbox_params.yaml")
    return SandboxFiles(world, policy, train_path, heldout_path, validation_path, params_path, ready)
