"""The TRL release the trainer is written against, and the private GRPOTrainer members it
calls or overrides, checked on every trainer class built (a TRL upgrade that renames one fails
at start-up, not mid-run).
"""

from __future__ import annotations

import inspect

from packaging.version import Version

SUPPORTED_TRL = "1.15"
# Private GRPOTrainer members this module calls or overrides, with their leading parameters.
_PRIVATE_API: dict[str, tuple[str, ...]] = {
    "_generate_and_score_completions": ("inputs",),
    "_generate_single_turn": ("prompt_ids", "images", "multimodal_fields", "num_generations"),
    "_tokenize_prompts": ("prompts",),
    "_calculate_rewards": ("inputs", "prompts", "completions", "completion_ids_list"),
    "_log_completion_extra": ("column", "values"),
    "_get_train_sampler": ("dataset",),
    "_get_per_token_logps_and_entropies": ("model", "input_ids", "attention_mask", "logits_to_keep"),
}


class TRLVersionError(RuntimeError):
    """The trainer class in use does not have the private GRPOTrainer API this module relies on."""


def _is_ours(klass: type) -> bool:
    """Classes of this library that wrap the private API (their own signatures are not TRL's)."""
    return bool(klass.__dict__.get("_ruscarl_wrapper", False))


def _is_pass_through(sig: inspect.Signature) -> bool:
    """`(self, *args, **kwargs)`: a wrapper that says nothing about the real parameters."""
    params = [p for p in sig.parameters.values() if p.name != "self"]
    return bool(params) and all(
        p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD) for p in params
    )


def real_signature(trainer_cls: type, name: str) -> tuple[type, list[str]] | None:
    """The class defining `name` with a real signature, and its parameter names (no `self`).

    Walks the MRO of the class actually used, past this library's own overrides and past
    `(*args, **kwargs)` wrappers such as Unsloth's (which do not use `functools.wraps`, so the
    real signature sits further up). None when no class defines it with a real signature.
    """
    for klass in trainer_cls.__mro__:
        if _is_ours(klass) or name not in klass.__dict__:
            continue
        member = klass.__dict__[name]
        member = getattr(member, "__func__", member)  # staticmethod / classmethod
        try:
            sig = inspect.signature(member)  # follows __wrapped__ where a wrapper sets it
        except (TypeError, ValueError):
            continue
        if _is_pass_through(sig):
            continue
        return klass, [p for p in sig.parameters if p != "self"]
    return None


def check_private_api(trainer_cls: type) -> None:
    """Fail unless every private member used here exists on `trainer_cls` with the expected
    leading parameters, and its `__init__` takes `rollout_func`."""
    import trl

    where = f"{trainer_cls.__module__}.{trainer_cls.__qualname__} (trl=={trl.__version__})"
    found = real_signature(trainer_cls, "__init__")
    if found is None or "rollout_func" not in found[1]:
        owner = found[0].__qualname__ if found else "no class"
        raise TRLVersionError(f"{where}: __init__ (defined by {owner}) has no `rollout_func` parameter")
    for name, expected in _PRIVATE_API.items():
        if getattr(trainer_cls, name, None) is None:
            raise TRLVersionError(f"{where} lacks {name}")
        found = real_signature(trainer_cls, name)
        if found is None:
            raise TRLVersionError(f"{where}: {name} is only defined through (*args, **kwargs) wrappers")
        owner, params = found
        if tuple(params[: len(expected)]) != expected:
            raise TRLVersionError(
                f"{where}: {owner.__qualname__}.{name} takes {params}, expected to start with "
                f"{list(expected)}"
            )


def check_trl_support(trainer_cls: type | None = None) -> None:
    """Fail loudly unless TRL is 1.15.x and the class used (default: the current
    `trl.GRPOTrainer`) has the private members used here."""
    import trl

    version = Version(trl.__version__)
    if f"{version.major}.{version.minor}" != SUPPORTED_TRL:
        raise TRLVersionError(
            f"ruscarl_lib's scaffolded GRPO trainer supports TRL {SUPPORTED_TRL}.x only (it relies "
            f"on private GRPOTrainer methods); found trl=={trl.__version__}. Install trl==1.15.0."
        )
    check_private_api(trainer_cls if trainer_cls is not None else current_grpo_trainer())


def current_grpo_trainer() -> type:
    """`trl.GRPOTrainer` as it is now (Unsloth's generated class once Unsloth has patched TRL)."""
    import trl

    return trl.GRPOTrainer


def class_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
