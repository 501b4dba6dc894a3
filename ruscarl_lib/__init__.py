"""RuscaRL suite: rubric-scaffolded GRPO as a Jupyter-first experiment library.

Kept light on purpose: importing the package must not import torch, transformers or TRL
(Unsloth has to be imported before them on a GPU).
"""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("ruscarl-lib")
except PackageNotFoundError:  # a source tree on PYTHONPATH, not installed
    __version__ = "0+unknown"
