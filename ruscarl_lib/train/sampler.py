"""TRL's RepeatSampler, reseeded per epoch so that a resumed run sees the same order.

Built on first use over the sampler class TRL actually made (no TRL import at module level).
"""

from __future__ import annotations

import hashlib


def _epoch_seeded_set_epoch(self, epoch: int) -> None:
    if not self.shuffle:
        return
    seed = 0 if self.seed is None else int(self.seed)
    if epoch:
        digest = hashlib.blake2b(f"{seed}/{epoch}".encode(), digest_size=8).digest()
        seed = int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF
    self.generator.manual_seed(seed)


_SAMPLER_CLS: dict[type, type] = {}


def epoch_seeded_sampler_class(base: type | None = None) -> type:
    """TRL's RepeatSampler whose shuffle depends only on (seed, epoch).

    The stock sampler draws each epoch's permutation from one running generator, so a run
    resumed in a later epoch would see a different order than an uninterrupted one. Accelerate
    calls `set_epoch` on the sampler; reseeding there makes resumption exact. Epoch 0 uses
    `seed` itself, so the first epoch matches stock TRL. Built on first use (no TRL import at
    module level), over the class of the sampler TRL actually made.
    """
    if base is None:
        from trl.trainer.utils import RepeatSampler as base
    if base not in _SAMPLER_CLS:
        _SAMPLER_CLS[base] = type(
            "EpochSeededRepeatSampler", (base,),
            {"set_epoch": _epoch_seeded_set_epoch, "__module__": __name__,
             "__doc__": epoch_seeded_sampler_class.__doc__},
        )
    return _SAMPLER_CLS[base]


def is_epoch_seeded(sampler: object) -> bool:
    """Whether `sampler` is already one of the classes built here."""
    return type(sampler) in _SAMPLER_CLS.values()
