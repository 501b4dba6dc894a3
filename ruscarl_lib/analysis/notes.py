"""Tables that say what they could not include.

Runs differ in what they logged. Every analysis table is a DataFrame whose
`attrs["missing"]` lists, in words, what could not be used and why; `missing(frame)` reads it,
and plotting code skips a figure whose table is empty rather than failing.
"""

from __future__ import annotations

from typing import Iterable

import pandas as pd

__all__ = [
    "missing",
]


def missing(frame: pd.DataFrame) -> list[str]:
    """What a table could not include, in words (empty when nothing was missing)."""
    return list(frame.attrs.get("missing", []))


def with_missing(frame: pd.DataFrame, notes: Iterable[str]) -> pd.DataFrame:
    frame.attrs["missing"] = list(dict.fromkeys(notes))
    return frame
