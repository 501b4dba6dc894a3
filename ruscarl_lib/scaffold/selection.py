"""Which criteria a rollout is shown: `round(n * ratio)` of them, uniformly at random.

The reference code draws them with an unseeded RNG; here every draw is a pure function of
(seed, example, step, sample), so a run can be replayed and audited.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np


__all__ = [
    "n_shown",
    "select_criteria",
]


def _check_ratio(ratio: float) -> None:
    if not (0.0 <= ratio <= 1.0) or math.isnan(ratio):
        raise ValueError(f"ratio must lie in [0, 1], got {ratio}")


def n_shown(n_criteria: int, ratio: float) -> int:
    """Number of criteria revealed: Python's round (half to even), as the reference code."""
    if n_criteria < 0:
        raise ValueError(f"n_criteria must be >= 0, got {n_criteria}")
    _check_ratio(ratio)
    return int(round(n_criteria * ratio))


def _coordinate_rng(seed: int, example_id: str, step: int, group_position: int) -> np.random.Generator:
    """An RNG that depends only on its coordinates, identical across processes and runs.

    Python's `hash()` is salted per process, so a stable digest is used instead.
    """
    key = f"ruscarl-scaffold\x1f{int(seed)}\x1f{example_id}\x1f{int(step)}\x1f{int(group_position)}"
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=16).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


def select_criteria(
    n_criteria: int,
    ratio: float,
    *,
    seed: int,
    example_id: str,
    step: int,
    group_position: int,
) -> list[int]:
    """Sorted indices of the criteria to reveal: `n_shown` of them, uniformly without replacement.

    Positive and negative criteria are drawn alike. The draw is a random permutation cut to
    length, so for fixed coordinates a smaller ratio reveals a subset of a larger one.
    """
    k = n_shown(n_criteria, ratio)
    if k == 0:
        return []
    rng = _coordinate_rng(seed, example_id, step, group_position)
    return sorted(int(i) for i in rng.permutation(n_criteria)[:k])
