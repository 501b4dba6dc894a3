"""Run notebooks in batch (papermill) and turn executed notebooks into shareable HTML reports.

Executed notebooks are the reports: every run writes its executed copy next to the files it
produced, and several executed notebooks can be stitched into one self-contained HTML page.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterable

import nbformat

from ruscarl_lib.paths import atomic_write_text, project_root, resolve_path

NOTEBOOK_DIR = "notebooks"


def notebook_path(name: str) -> Path:
    """`01_rubric_exploration` or `01_rubric_exploration.ipynb` -> path under notebooks/."""
    p = Path(name)
    if p.suffix != ".ipynb":
        p = p.with_suffix(".ipynb")
    if not p.is_absolute() and len(p.parts) == 1:
        p = project_root() / NOTEBOOK_DIR / p
    p = resolve_path(p)
    if not p.is_file():
        available = sorted(x.stem for x in (project_root() / NOTEBOOK_DIR).glob("*.ipynb"))
        raise FileNotFoundError(f"notebook {name!r} not found at {p}; available: {available}")
    return p


def run_notebook(
    name: str | Path,
    output_path: str | Path,
    parameters: dict[str, Any] | None = None,
    *,
    progress: bool = True,
    timeout_s: int | None = None,
) -> Path:
    """Execute a notebook with papermill, from the project root, and write the executed copy.

    Parameters must be plain values (paths, numbers, names). The executed copy is written to a
    temporary name first and renamed only on success, so a finished-looking report is never a
    half-run one; on failure papermill's partial copy is kept as `<name>.failed.ipynb`.
    With `progress`, one terminal line follows what the notebook does (cell k/N, training
    steps, evaluation, judge calls; see progress.py).
    """
    import papermill as pm

    from ruscarl_lib.progress import ENV_VAR, ProgressLine

    source = notebook_path(str(name))
    output_path = resolve_path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    partial = output_path.with_name(output_path.stem + ".running.ipynb")
    events = output_path.with_name(output_path.stem + ".progress.jsonl")
    events.unlink(missing_ok=True)
    # Kernels inherit these: widgets-only views fall back to plain output (see widgets.py),
    # library code reports progress to the events file, and progress bars, which would only
    # leave residue in the executed notebook, stay off (the terminal line replaces them).
    kernel_env = {"RUSCARL_HEADLESS": "1", ENV_VAR: str(events), "TQDM_DISABLE": "1",
                  "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    saved = {k: os.environ.get(k) for k in kernel_env}
    os.environ.update(kernel_env)
    _register_engine()
    # The kernel starts in the project root, where `project_root()` finds pyproject.toml, so
    # relative paths in parameters mean the same thing as on this command line.
    try:
        with ProgressLine(events, output_path.stem) if progress else contextlib.nullcontext():
            pm.execute_notebook(
                str(source),
                str(partial),
                parameters=parameters or {},
                cwd=str(project_root()),
                progress_bar=False,
                kernel_name="python3",
                engine_name=_ENGINE,
                execution_timeout=timeout_s,
                log_output=False,
                stdout_file=None,
            )
    except BaseException:
        if partial.exists():
            os.replace(partial, output_path.with_name(output_path.stem + ".failed.ipynb"))
        raise
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    os.replace(partial, output_path)
    events.unlink(missing_ok=True)  # kept only beside a failed run
    return output_path


_ENGINE = "ruscarl"


def _register_engine() -> None:
    """Papermill's nbclient engine, plus `cell` progress events and an IPC kernel.

    IPC (Unix sockets in the runtime folder) instead of loopback TCP: the kernel is private to
    this process, and ipykernel stops printing its "running over TCP without encryption"
    warning at every stage.
    """
    from jupyter_client.manager import AsyncKernelManager
    from papermill.engines import NBClientEngine, papermill_engines

    from ruscarl_lib.progress import emit

    if _ENGINE in papermill_engines._engines:
        return

    class IPCKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            kwargs.setdefault("transport", "ipc")
            super().__init__(**kwargs)

    class ProgressEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, **kwargs):
            code = [i for i, c in enumerate(nb_man.nb.cells) if c.cell_type == "code"]
            start = nb_man.cell_start

            def cell_start(cell, cell_index=None, **kw):
                if cell_index in code:
                    emit("cell", index=code.index(cell_index) + 1, total=len(code))
                return start(cell, cell_index, **kw)

            nb_man.cell_start = cell_start
            kwargs.setdefault("kernel_manager_class", IPCKernelManager)
            return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)

    papermill_engines.register(_ENGINE, ProgressEngine)


def combine_notebooks(paths: Iterable[str | Path], title: str) -> nbformat.NotebookNode:
    """One notebook holding the cells of several executed notebooks, each under a heading."""
    combined = nbformat.v4.new_notebook()
    combined.cells.append(nbformat.v4.new_markdown_cell(f"# {title}"))
    for path in paths:
        nb = nbformat.read(str(path), as_version=4)
        combined.cells.append(nbformat.v4.new_markdown_cell(f"---\n# Notebook `{Path(path).name}`"))
        combined.cells.extend(nb.cells)
    for i, cell in enumerate(combined.cells):  # the same notebook may appear twice: fresh ids
        cell["id"] = f"cell-{i}"
    combined.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                         "language_info": {"name": "python"}}
    return combined


def export_html(paths: Iterable[str | Path], html_path: str | Path, title: str) -> Path:
    """Render executed notebooks into one self-contained HTML report (images inlined)."""
    from nbconvert import HTMLExporter

    nb = combine_notebooks(paths, title)
    exporter = HTMLExporter(template_name="lab")
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title}})
    return atomic_write_text(resolve_path(html_path), body)


def write_json(path: str | Path, payload: Any) -> Path:
    """Write a small JSON summary atomically (what notebooks hand back to scripts and tests)."""
    return atomic_write_text(resolve_path(path), json.dumps(payload, indent=2, default=_jsonable))


def read_json(path: str | Path) -> Any:
    return json.loads(resolve_path(path).read_text())


def _jsonable(x: Any) -> Any:
    if hasattr(x, "item"):
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def echo(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
