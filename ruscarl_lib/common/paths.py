"""Where things are: the project root, and paths relative to it.

Notebooks run with their own folder as the working directory in JupyterLab but from the project
root under papermill; resolving every relative path against the project root makes both agree.
"""

from __future__ import annotations

import os
from pathlib import Path


def project_root(start: str | Path | None = None) -> Path:
    """The nearest folder at or above `start` (default: cwd) holding pyproject.toml.

    `RUSCARL_ROOT` overrides the search; without a pyproject.toml anywhere above, the cwd is used.
    """
    if os.environ.get("RUSCARL_ROOT"):
        return Path(os.environ["RUSCARL_ROOT"]).resolve()
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "ruscarl_lib").is_dir():
            return folder
    return here


def resolve_path(path: str | Path, root: str | Path | None = None) -> Path:
    """Absolute paths pass through; relative ones are taken from the project root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else (Path(root) if root else project_root()) / p


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write through a temporary file and rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def atomic_write_parquet(path: str | Path, frame) -> Path:
    """`frame` (a pandas DataFrame, no index) as parquet, through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return path
