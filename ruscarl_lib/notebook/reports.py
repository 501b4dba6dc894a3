"""Run notebooks in batch (papermill) and turn executed notebooks into shareable HTML reports.

Executed notebooks are the reports: every run writes its executed copy next to the files it
produced, and several executed notebooks can be stitched into one self-contained HTML page.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable

import nbformat

from ruscarl_lib.common.paths import atomic_write_text, project_root, resolve_path

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

    from ruscarl_lib.common.progress import ENV_VAR, ProgressLine

    source = notebook_path(str(name))
    output_path = resolve_path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    partial = output_path.with_name(output_path.stem + ".running.ipynb")
    events = output_path.with_name(output_path.stem + ".progress.jsonl")
    events.unlink(missing_ok=True)
    # The kernel's environment: widgets-only views fall back to plain output (see widgets.py),
    # library code reports progress to the events file, and progress bars, which would only
    # leave residue in the executed notebook, stay off (the terminal line replaces them).
    kernel_env = {"RUSCARL_HEADLESS": "1", ENV_VAR: str(events), "TQDM_DISABLE": "1",
                  "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    # The kernel starts in the project root, where `project_root()` finds pyproject.toml, so
    # relative paths in parameters mean the same thing as on this command line. Its environment
    # is passed to that kernel alone (sweeps run several notebooks at once from threads).
    try:
        with ProgressLine(events, output_path.stem) if progress else contextlib.nullcontext():
            pm.execute_notebook(
                str(source),
                str(partial),
                parameters=parameters or {},
                cwd=str(project_root()),
                progress_bar=False,
                kernel_name="python3",
                engine_name=_engine(),
                execution_timeout=timeout_s,
                log_output=False,
                stdout_file=None,
                kernel_manager_class=_kernel_manager(kernel_env),
                progress_file=str(events),
            )
    except BaseException:
        if partial.exists():
            os.replace(partial, output_path.with_name(output_path.stem + ".failed.ipynb"))
        raise
    os.replace(partial, output_path)
    events.unlink(missing_ok=True)  # kept only beside a failed run
    return output_path


def _kernel_manager(env: dict[str, str]):
    """A kernel manager class whose kernels get `env` on top of ours, over IPC.

    IPC (Unix sockets in the runtime folder) instead of loopback TCP: the kernel is private to
    this process, and ipykernel stops printing its "running over TCP without encryption"
    warning at every stage.
    """
    from jupyter_client.manager import AsyncKernelManager

    class RuscarlKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            # sockets in a private folder: kernels started at once never race for a name,
            # and none lands in the working directory
            kwargs.setdefault("transport", "ipc")
            kwargs.setdefault("ip", os.path.join(tempfile.mkdtemp(prefix="ruscarl-kernel-"), "k"))
            super().__init__(**kwargs)

        async def _async_cleanup_resources(self, restart: bool = False) -> None:
            await super()._async_cleanup_resources(restart=restart)
            if not restart:
                shutil.rmtree(os.path.dirname(self.ip), ignore_errors=True)

        async def _async_pre_start_kernel(self, **kw):
            kw["env"] = {**(kw.get("env") or os.environ), **env}
            return await super()._async_pre_start_kernel(**kw)

    return RuscarlKernelManager


def _engine() -> str:
    """Papermill's nbclient engine plus `cell k/N` progress events, registered once."""
    from papermill.engines import NBClientEngine, papermill_engines

    from ruscarl_lib.common.progress import emit

    name = "ruscarl"
    if name in papermill_engines._engines:
        return name

    class ProgressEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, progress_file=None, **kwargs):
            code = [i for i, c in enumerate(nb_man.nb.cells) if c.cell_type == "code"]
            start = nb_man.cell_start

            def cell_start(cell, cell_index=None, **kw):
                if cell_index in code:
                    emit("cell", path=progress_file, index=code.index(cell_index) + 1, total=len(code))
                return start(cell, cell_index, **kw)

            nb_man.cell_start = cell_start
            return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)

    papermill_engines.register(name, ProgressEngine)
    return name


def combine_notebooks(paths: Iterable[str | Path], title: str,
                      summary: str | None = None) -> nbformat.NotebookNode:
    """One notebook holding the cells of several executed notebooks, each under a heading.

    `summary` (HTML) opens the page, before the first notebook's section.
    """
    combined = nbformat.v4.new_notebook()
    combined.cells.append(nbformat.v4.new_markdown_cell(f"# {title}"))
    if summary:  # an HTML output (raw cells would be sanitised by the exporter)
        cell = nbformat.v4.new_code_cell("")
        cell.outputs = [nbformat.v4.new_output("display_data", data={"text/html": summary, "text/plain": title})]
        combined.cells.append(cell)
    for path in paths:
        nb = clean_notebook(nbformat.read(str(path), as_version=4), name=Path(path).stem)
        combined.cells.append(nbformat.v4.new_markdown_cell(f"---\n# Notebook `{Path(path).name}`"))
        combined.cells.extend(nb.cells)
    for i, cell in enumerate(combined.cells):  # the same notebook may appear twice: fresh ids
        cell["id"] = f"cell-{i}"
    combined.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                         "language_info": {"name": "python"}}
    return combined


def export_html(paths: Iterable[str | Path], html_path: str | Path, title: str,
                summary: str | None = None) -> Path:
    """Render executed notebooks into one self-contained HTML report (images inlined).

    The page is cleaned for sharing (see `clean_notebook`): code hidden behind a toggle, long
    logs and tables folded, no progress-bar residue, paths relative to the project root.
    """
    nb = combine_notebooks(paths, title, summary)
    return atomic_write_text(resolve_path(html_path), _render_html(nb, title))


def export_each(paths: Iterable[str | Path]) -> list[Path]:
    """Every executed notebook also as its own page, `<name>.html` beside it."""
    out = []
    for path in paths:
        path = Path(path)
        nb = clean_notebook(nbformat.read(str(path), as_version=4), name=path.stem)
        out.append(atomic_write_text(path.with_suffix(".html"), _render_html(nb, path.stem)))
    return out


def _render_html(nb: nbformat.NotebookNode, title: str) -> str:
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab")
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title}})
    body = body.replace("</head>", _PAGE_STYLE + "</head>", 1)
    return body.replace("<main>", "<main>\n" + _CODE_TOGGLE, 1)


# A pure-CSS toggle: code cells stay hidden until the box is ticked (no script needed).
_CODE_TOGGLE = ('<label class="ruscarl-code-toggle"><input type="checkbox" id="ruscarl-show-code"> '
                'show code</label>')
_PAGE_STYLE = """<style>
body:not(:has(#ruscarl-show-code:checked)) .jp-CodeCell .jp-Cell-inputWrapper { display: none; }
body:not(:has(#ruscarl-show-code:checked)) .jp-CodeCell.jp-mod-noOutputs { display: none; }
.ruscarl-code-toggle { position: fixed; top: 6px; right: 12px; z-index: 10; background: #fff;
  border: 1px solid #ccc; border-radius: 4px; padding: 2px 8px; font: 13px sans-serif; }
.ruscarl-summary table { border-collapse: collapse; margin: 4px 0 8px; }
.ruscarl-summary td, .ruscarl-summary th { padding: 2px 10px; border-bottom: 1px solid #ddd; text-align: right; }
.ruscarl-summary td:first-child, .ruscarl-summary th:first-child { text-align: left; }
.ruscarl-summary .ruscarl-figures img { max-width: 48%; margin-right: 1%; vertical-align: top; }
details.ruscarl-fold > summary { cursor: pointer; color: #555; }
</style>
"""


# --------------------------------------------------------------------------------------------
# Cleaning executed notebooks for a page people read
# --------------------------------------------------------------------------------------------

#: tqdm's bar ("Tokenizing train dataset:  0%|          | 0/64 [00:00<?, ?it/s]")
_TQDM = re.compile(r"\d+%\|.*\|")
FOLD_LINES = 15  # text outputs longer than this are folded
FOLD_ROWS = 12   # and tables with more rows than this


def clean_notebook(nb: nbformat.NotebookNode, name: str = "", root: Path | None = None) -> nbformat.NotebookNode:
    """An executed notebook as a reader should see it (the notebook itself is not changed).

    - progress-bar residue removed (tqdm lines in streams, tqdm widgets without their state);
    - widget outputs of a headless run (no state to render) reduced to their text;
    - absolute paths under the project root shown relative to it;
    - long logs and tables folded into a <details> block that opens on a click;
    - figures get alt text: the notebook name and the nearest heading above them.
    """
    import copy

    nb = copy.deepcopy(nb)
    prefix = str(root or project_root()).rstrip("/") + "/"
    heading = name
    for cell in nb.cells:
        cell.source = _relative(cell.source, prefix)
        if cell.cell_type == "markdown":
            heading = _heading(cell.source) or heading
            continue
        if cell.cell_type != "code":
            continue
        outputs = []
        for out in cell.get("outputs", []):
            for text in _texts(out):
                heading = _heading(text) or heading
            out = _clean_output(out, prefix, f"{name}: {heading}" if name and heading != name else (heading or "figure"))
            if out is not None:
                outputs.append(out)
        cell.outputs = outputs
    return nb


def _texts(out) -> list[str]:
    data = out.get("data", {})
    return [_join(data[k]) for k in ("text/markdown",) if k in data]


def _join(text) -> str:
    return "".join(text) if isinstance(text, list) else str(text)


def _heading(markdown: str) -> str | None:
    for line in markdown.splitlines():
        line = line.strip()
        if line.startswith("#"):
            return line.lstrip("#").strip().strip("`") or None
    return None


def _relative(text, prefix: str):
    if isinstance(text, list):
        return [t.replace(prefix, "") for t in text]
    return text.replace(prefix, "") if isinstance(text, str) else text


def _clean_output(out, prefix: str, alt: str):
    import html

    if out.output_type == "stream":
        lines = [ln for ln in _join(out.text).replace("\r\n", "\n").split("\n")]
        # a carriage return rewrites the line: keep what was last written on it
        lines = [ln.rsplit("\r", 1)[-1] for ln in lines]
        lines = [ln for ln in lines if not _TQDM.search(ln)]
        text = _relative("\n".join(lines), prefix)
        if not text.strip():
            return None
        if text.count("\n") > FOLD_LINES:
            return _folded(f"<pre>{html.escape(text)}</pre>", f"log, {text.count(chr(10))} lines")
        out.text = text
        return out
    if out.output_type == "error":
        out.traceback = [_relative(t, prefix) for t in out.get("traceback", [])]
        return out
    if "data" not in out:
        return out
    data = out.data
    if "application/vnd.jupyter.widget-view+json" in data:
        plain = _join(data.get("text/plain", ""))
        if _TQDM.search(plain) or not plain.strip():
            return None
        data.pop("application/vnd.jupyter.widget-view+json")
    for key in list(data):
        if key.startswith("text/") or key == "application/json":
            data[key] = _relative(data[key], prefix)
    if "image/png" in data:
        png = _join(data["image/png"]).replace("\n", "")
        return nbformat.v4.new_output("display_data", data={
            "text/html": f'<img alt="{html.escape(alt, quote=True)}" style="max-width: 100%" '
                         f'src="data:image/png;base64,{png}">',
            "text/plain": alt})
    if "text/html" in data and "<progress" in _join(data["text/html"]):
        # transformers' notebook progress bar: drop the bar, fold the loss table under it
        table = re.search(r"<table.*</table>", _join(data["text/html"]), re.S)
        if table is None:
            return None
        return _folded(table.group(0), f"training log, {table.group(0).count('<tr') - 1} rows")
    if "text/html" in data:
        rows = _join(data["text/html"]).count("<tr")
        if rows > FOLD_ROWS + 1:
            return _folded(_join(data["text/html"]), f"table, {rows - 1} rows")
    elif "text/plain" in data and _join(data["text/plain"]).count("\n") > FOLD_LINES:
        text = _join(data["text/plain"])
        return _folded(f"<pre>{html.escape(text)}</pre>", f"output, {text.count(chr(10))} lines")
    return out


def _folded(html_body: str, label: str):
    return nbformat.v4.new_output("display_data", data={
        "text/html": f'<details class="ruscarl-fold"><summary>{label} (click to show)</summary>{html_body}</details>',
        "text/plain": label})


# --------------------------------------------------------------------------------------------
# The summary that opens a report
# --------------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """What ran it: host OS, CPU count, accelerator; the versions that shape results."""
    import platform

    from ruscarl_lib.train.run_folder import library_versions

    versions = library_versions()
    return {
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, "
                   f"{versions.pop('device', None) or 'cpu'}",
        "versions": {k: v for k, v in versions.items() if v},
    }


def relative_to_root(path: str | Path | None) -> str:
    """`path` relative to the project root when it lies under it, else unchanged."""
    if path in (None, ""):
        return ""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(project_root()))
    except ValueError:
        return str(p)


def summary_html(
    what: dict[str, Any],
    table: "Any",
    numbers: dict[str, Any] | None = None,
    figures: Iterable[tuple[str | Path, str]] = (),
    note: str = "",
) -> str:
    """The report's first screen: what was run, the headline table, key numbers, key figures.

    `what` is shown as one line of `key: value`, `table` (a DataFrame) is the headline table
    (id `headline`), `figures` are (png path, alt text) pairs; missing files are skipped.
    """
    import base64
    import html

    info = machine_info()
    facts = {**what, "machine": info["machine"]}
    line = " · ".join(f"<b>{html.escape(str(k))}</b> {html.escape(str(v))}" for k, v in facts.items() if v not in (None, ""))
    parts = [f'<div class="ruscarl-summary"><p>{line}</p>']
    if note:
        parts.append(f"<p>{html.escape(note)}</p>")
    parts.append(table.to_html(table_id="headline", na_rep="–", escape=True, border=0))
    if numbers:
        items = "".join(f"<li>{html.escape(str(k))}: <b>{html.escape(_fmt(v))}</b></li>" for k, v in numbers.items())
        parts.append(f"<ul>{items}</ul>")
    imgs = []
    for path, alt in figures:
        path = Path(path)
        if path.is_file():
            data = base64.b64encode(path.read_bytes()).decode()
            imgs.append(f'<img alt="{html.escape(alt, quote=True)}" src="data:image/png;base64,{data}">')
    if imgs:
        parts.append('<div class="ruscarl-figures">' + "".join(imgs) + "</div>")
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    parts.append(f'<details class="ruscarl-fold"><summary>versions</summary><p>{html.escape(versions)}</p></details>')
    parts.append("</div>")
    return "\n".join(parts)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v):
        return f"[{v[0]:.3f}, {v[1]:.3f}]"
    return str(v)


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
