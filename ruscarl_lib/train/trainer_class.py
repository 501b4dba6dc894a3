"""The scaffolded trainer class, built at run time over whatever `trl.GRPOTrainer` is then.

On a GPU `import unsloth` rebinds `trl.GRPOTrainer` to a generated `UnslothGRPOTrainer`; a
subclass made at import time would silently keep TRL's class and lose every Unsloth patch.
So `scaffolded_trainer_class` puts the base-less `ScaffoldedGRPOMixin` (train.rollouts) on top
of the class current when it is called, and nothing here imports TRL at module level. The
epoch-seeded sampler (train.sampler) is built the same way.
"""

from __future__ import annotations

from ruscarl_lib.train.rollouts import ScaffoldedGRPOMixin
from ruscarl_lib.train.trl_version import (
    check_trl_support,
    class_name,
    current_grpo_trainer,
)

_TRAINER_CLS: dict[tuple[type, type], type] = {}


def grpo_base_of(trainer_cls: type) -> type:
    """The GRPOTrainer class a scaffolded trainer class was built on (any other trainer class:
    itself)."""
    mro = trainer_cls.__mro__
    return mro[mro.index(ScaffoldedGRPOMixin) + 1] if ScaffoldedGRPOMixin in mro else trainer_cls


def scaffolded_trainer_class(base: type | None = None, extra: type | None = None) -> type:
    """`ScaffoldedGRPOTrainer` over `base` (default: `trl.GRPOTrainer` as it is now).

    Call it after the backend was prepared (`train.backend.prepare_backend`), so that on a GPU the
    base is Unsloth's rewritten trainer. `extra` is an optional base-less mixin of further
    overrides put on top (tests and the smoke script use `train.contract.ContractProbeMixin`).
    The private API is checked on the class built; classes are cached per base.
    """
    base = current_grpo_trainer() if base is None else base
    if issubclass(base, ScaffoldedGRPOMixin):
        raise TypeError(f"{class_name(base)} is already a scaffolded trainer; pass its GRPO base")
    key = (base, extra or object)
    if key not in _TRAINER_CLS:
        if key[1] is object:
            cls = type("ScaffoldedGRPOTrainer", (ScaffoldedGRPOMixin, base),
                       {"__module__": __name__, "__doc__": ScaffoldedGRPOMixin.__doc__})
        else:
            cls = type(extra.__name__.removesuffix("Mixin"), (extra, scaffolded_trainer_class(base)),
                       {"__module__": extra.__module__, "__doc__": extra.__doc__})
        check_trl_support(cls)
        _TRAINER_CLS[key] = cls
    return _TRAINER_CLS[key]


def __getattr__(name: str):
    # `from ruscarl_lib.train.trainer_class import ScaffoldedGRPOTrainer` resolves now, over the
    # current trl.GRPOTrainer, instead of binding whatever existed at import time.
    if name == "ScaffoldedGRPOTrainer":
        return scaffolded_trainer_class()
    if name == "ContractProbe":  # the clean-prompt contract probe (train.contract) on top of it
        from ruscarl_lib.train.contract import ContractProbeMixin

        return scaffolded_trainer_class(extra=ContractProbeMixin)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def resolve_trainer_class(trainer_cls: type | None = None) -> type:
    """The trainer class of a run, built now over the current `trl.GRPOTrainer`.

    `trainer_cls` may be None (the scaffolded trainer), a base-less mixin of extra overrides
    (put on top of it), or a scaffolded trainer class already built, which must then be built
    on the current `trl.GRPOTrainer` (else it would silently miss Unsloth's rewrite).
    """
    if trainer_cls is None:
        return scaffolded_trainer_class()
    if issubclass(trainer_cls, ScaffoldedGRPOMixin):
        base, now = grpo_base_of(trainer_cls), current_grpo_trainer()
        if base is not now:
            raise TypeError(
                f"trainer_cls {trainer_cls.__qualname__} was built on {class_name(base)}, but "
                f"trl.GRPOTrainer is now {class_name(now)}; pass its mixin instead, or build it "
                "after the backend was prepared"
            )
        check_trl_support(trainer_cls)
        return trainer_cls
    from transformers import Trainer

    if issubclass(trainer_cls, Trainer):
        raise TypeError("trainer_cls must be a scaffolded trainer class or a base-less mixin")
    return scaffolded_trainer_class(extra=trainer_cls)
