"""RuscaRL suite library. `__version__` matches pyproject.toml (a test checks it); run
fingerprints include it, so a new release does not silently continue an older release's run.
Kept light on purpose: importing the package must not import torch, transformers or TRL
(Unsloth has to be imported before them on a GPU)."""

__version__ = "0.1.0"
