"""Plain JSON values from what tables and reports hold (numpy scalars, NaN, paths).

Why one place: evaluation reports, the analysis summary and the novelty file are all read back
by other programs, where NaN (not JSON) and numpy types (not serialisable) would break them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def json_ready(x: Any) -> Any:
    """Plain JSON values: numpy scalars unwrapped, NaN and infinities as None, Paths as text."""
    if isinstance(x, dict):
        return {str(k): json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_ready(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x
