"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def healthbench_500_path() -> Path:
    """HealthBench-500 (verl parquet) from $RUSCARL_HEALTHBENCH_500 or the shared folder; skips if absent."""
    env = os.environ.get("RUSCARL_HEALTHBENCH_500")
    path = Path(env) if env else REPO.parent / "shared/data/healthbench/healthbench_500.parquet"
    if not path.exists():
        pytest.skip(f"HealthBench-500 not available at {path}")
    return path
