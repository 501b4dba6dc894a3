"""The one error for "this model backend cannot run here".

Why a module of its own: training (Unsloth or transformers) and evaluation (transformers or
vLLM) both refuse a backend whose package or GPU is missing, and callers such as the notebooks
catch one exception type for both, whichever stage raised it.
"""

from __future__ import annotations

__all__ = ["BackendUnavailable"]


class BackendUnavailable(RuntimeError):
    """The requested model backend cannot run here (missing package, no GPU, unsupported mix)."""
