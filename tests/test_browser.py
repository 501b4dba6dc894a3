"""The notebooks as people use them: JupyterLab in a real (headless) browser, and the report.

A JupyterLab server is started on a free loopback port with a token, Chromium (Debian's
`chromium`, driven through the `playwright` package; never a downloaded browser) opens the
notebooks, runs them and moves their controls like a person would. Every wait is on the
page's state (a heading, a step counter, a button's status), never a fixed sleep.
Screenshots land in outputs/browser/ so a failure can be looked at.

Without a browser the tests skip with the reason; under CI=true they fail instead
(`.ci/run` installs what is missing).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest
import yaml

from ruscarl_lib.common.loopback import free_loopback_port

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "outputs" / "browser"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# one run of a notebook in JupyterLab: generous for a loaded 2-core machine
RUN_TIMEOUT_MS = 240_000

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def _chromium() -> str:
    """Path of the Chromium to drive, or skip (fail under CI) saying what is missing."""
    problems = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problems.append("the `playwright` Python package is not installed")
    exe = os.environ.get("RUSCARL_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        problems.append("no Chromium executable (Debian: apt-get install chromium)")
    if problems:
        reason = "browser tests need a browser: " + "; ".join(problems)
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " (CI=true: .ci/run installs both)")
        pytest.skip(reason)
    return exe


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """A fresh headless Chromium context (own user-data dir), 1280x800."""
    exe = _chromium()
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=exe, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 800})
        context.set_default_timeout(120_000)  # a loaded 2-core CI machine
        try:
            yield context
        finally:
            context.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory, browser):
    """JupyterLab serving a scratch folder with copies of the notebooks; stopped by pid."""
    root = tmp_path_factory.mktemp("lab")
    (root / "notebooks").mkdir()
    port, token = free_loopback_port(), secrets.token_hex(16)
    env = {**os.environ, "RUSCARL_ROOT": str(ROOT), "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    env.pop("RUSCARL_HEADLESS", None)  # widgets must be live here
    # settings of a fresh user: start the notebook's own kernel without asking, no news toast
    settings = root / ".settings"
    for plugin, values in {"@jupyterlab/notebook-extension/tracker": {"autoStartDefaultKernel": True,
                                                                      "windowingMode": "none"},
                           "@jupyterlab/apputils-extension/notification": {"fetchNews": "false",
                                                                           "checkForUpdates": False}}.items():
        target = settings / f"{plugin}.jupyterlab-settings"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(values))
    env.update(JUPYTERLAB_SETTINGS_DIR=str(settings), JUPYTERLAB_WORKSPACES_DIR=str(root / ".workspaces"))
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--ServerApp.port={port}",
           "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           "--ServerApp.port_retries=0", "--LabApp.news_url=", "--ServerApp.disable_check_xsrf=False",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # containers run as root; JupyterLab refuses without it
    log = (root / "lab.log").open("w")
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"JupyterLab did not start:\n{(root / 'lab.log').read_text()[-3000:]}")
            time.sleep(0.3)
        yield {"url": url, "token": token, "root": root}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _copy_notebook(lab, name: str, parameters: dict) -> str:
    """notebooks/<name>.ipynb into the lab folder with its parameters cell replaced."""
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    original = cell.source
    cell.source = original + "\n# set by the browser test\n" + "\n".join(f"{k} = {v!r}" for k, v in parameters.items())
    nbformat.write(nb, lab["root"] / "notebooks" / f"{name}.ipynb")
    return f"notebooks/{name}.ipynb"


def _open(browser, lab, path: str):
    """The notebook in a new tab, its kernel started and idle."""
    page = browser.new_page()
    # a workspace of its own: JupyterLab would otherwise reopen the earlier tests' notebooks
    workspace = re.sub(r"\W", "-", Path(path).stem)
    page.goto(f"{lab['url']}/lab/workspaces/{workspace}/tree/{path}?token={lab['token']}")
    _wait_ready(page)
    return page


def _wait_ready(page) -> None:
    """The notebook is shown and its kernel idle."""
    page.wait_for_selector(".jp-NotebookPanel .jp-Notebook .jp-Cell")
    page.wait_for_selector(".jp-NotebookPanel-toolbar .jp-Notebook-ExecutionIndicator[data-status='idle']",
                           state="attached", timeout=RUN_TIMEOUT_MS)


def _run_all(page) -> None:
    """Run > Run All Cells, until the first code cell has run anew (shows a new execution count).

    While a notebook's kernel is still starting, a Run All can be dropped (the queued cells
    are reset when the kernel connection changes), so the command is repeated until the
    page shows the first cell ran (at most five times). Counts already shown (a rerun) must
    be passed by the new one.
    """
    before = page.evaluate("""() => Math.max(0, ...[...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]
        .map(p => Number((p.textContent.match(/\\[(\\d+)\\]/) || [0, 0])[1])))""")
    for attempt in range(5):
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
        page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
        try:
            page.wait_for_function("""(before) => {
                const p = document.querySelector('.jp-CodeCell .jp-InputPrompt');
                const m = p && p.textContent.match(/\\[(\\d+)\\]/);
                return m && Number(m[1]) > before;
            }""", arg=before, timeout=60_000)
            return
        except Exception:
            if attempt == 4:
                raise


_CELL_STATE_JS = """() => ({
    prompts: [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(p => p.textContent.trim()),
    busy: !!document.querySelector(".jp-Notebook-ExecutionIndicator[data-status='busy']"),
})"""


def _wait_done(page, lab=None, timeout_ms: int = RUN_TIMEOUT_MS, reruns: int = 2) -> None:
    """Every code cell has an execution count and the kernel is idle again.

    A Run All can also lose cells after the first one ran (a kernel connection change while
    the cells are queued resets them; seen once in CI: the kernel idle, later cells never
    run). When the kernel has been idle for 10 s with cells that never ran and none queued,
    Run All is given again (at most `reruns` times; the notebooks are safe to rerun). On a
    timeout the error lists every cell's prompt and the end of JupyterLab's log.
    """
    deadline = time.monotonic() + timeout_ms / 1000
    idle_since = None
    while True:
        state = page.evaluate(_CELL_STATE_JS)
        prompts, busy = state["prompts"], state["busy"]
        ran = [bool(re.search(r"\[\d+\]", p)) for p in prompts]
        queued = any("[*]" in p for p in prompts)
        if prompts and all(ran) and not busy:
            break
        now = time.monotonic()
        if busy or queued:
            idle_since = None
        elif idle_since is None:
            idle_since = now
        elif now - idle_since > 10 and reruns > 0:
            reruns -= 1
            idle_since = None
            _run_all(page)
            continue
        if now > deadline:
            log = (lab["root"] / "lab.log").read_text()[-3000:] if lab else ""
            raise AssertionError(f"the notebook did not finish in {timeout_ms / 1000:.0f} s: "
                                 f"cell prompts {prompts}, kernel busy={busy}\nJupyterLab log:\n{log}")
        page.wait_for_timeout(500)
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']", has_text="Traceback")
    assert errors.count() == 0, errors.first.inner_text()[:2000]


def _run_widgets_notebook(page, lab, widget: str, reruns: int = 2) -> None:
    """Run All until done and the live widget (CSS selector `widget`, inside it) is on the page.

    Seen on loaded machines, for the first notebook opened in a new JupyterLab page: every
    cell ran but the widget showed "Error displaying widget: model not found" (the kernel
    created the widget before the page's widget manager listened for it), sometimes only after
    the kernel was idle, and the Output widget's figures landed in the cell as plain outputs.
    A person reruns the cell and, when that does not help, reloads the page; so does this
    (`reruns` times, the last after a reload), and the widget wiring is then tested as usual.
    """
    for attempt in range(reruns + 1):
        if attempt and attempt == reruns:
            page.reload()
            _wait_ready(page)
        _run_all(page)
        _wait_done(page, lab)
        try:
            page.wait_for_selector(widget, timeout=60_000)
            return
        except Exception:
            if attempt == reruns:
                missing = page.locator(".jp-OutputArea-output", has_text="Error displaying widget").count()
                raise AssertionError(f"no {widget!r} after {reruns + 1} Run Alls, the last after a reload "
                                     f"({missing} outputs say 'Error displaying widget')") from None


def _slider(page, label: str):
    return page.locator(".widget-slider", has=page.locator(".widget-label", has_text=re.compile(f"^{re.escape(label)}$")))


def _set_slider(page, label: str, value) -> None:
    """Type a value into a slider's readout, as a person editing the number does."""
    readout = _slider(page, label).locator(".widget-readout")
    readout.click()
    page.keyboard.press("Control+A")
    page.keyboard.type(str(value))
    page.keyboard.press("Enter")
    page.wait_for_function("([el, v]) => el.textContent.trim() === v",
                           arg=[readout.element_handle(), str(value)])


def _readout(page, label: str) -> str:
    return _slider(page, label).locator(".widget-readout").inner_text().strip()


def _shot(page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"))


# --------------------------------------------------------------------------------------------
# 02: the schedule tuner
# --------------------------------------------------------------------------------------------


def test_schedule_tuner_redraws_and_writes_what_the_controls_show(browser, lab, tmp_path):
    out = tmp_path / "02"
    page = _open(browser, lab, _copy_notebook(lab, "02_scaffold_tuning", {"output_dir": str(out)}))
    try:
        _run_widgets_notebook(page, lab, ".ruscarl-schedule-view .ruscarl-schedule-caption")
        caption = page.locator(".ruscarl-schedule-view .ruscarl-schedule-caption")
        caption.wait_for()
        assert "G=8" in caption.inner_text()
        before = page.locator(".ruscarl-schedule-view img").get_attribute("src")
        _set_slider(page, "G", 4)
        page.wait_for_function("() => /G=4,/.test((document.querySelector('.ruscarl-schedule-caption')?.textContent || ''))")
        _set_slider(page, "t0", "0.35")
        page.wait_for_function("() => /t0=0.35/.test((document.querySelector('.ruscarl-schedule-caption')?.textContent || ''))")
        _set_slider(page, "alpha", "200")
        # the kernel has every new value once its redraw says so (10**2.3 = 199.5..., shown as 200)
        page.wait_for_function("() => /alpha=200,/.test((document.querySelector('.ruscarl-schedule-caption')?.textContent || ''))")
        after = page.locator(".ruscarl-schedule-view img").get_attribute("src")
        assert after and after != before  # the heatmaps were drawn again
        page.get_by_role("button", name="write params").click()
        page.wait_for_function("() => [...document.querySelectorAll('.widget-html')].some(e => /wrote/.test(e.textContent))")
        shown = {k: _readout(page, k) for k in ("G", "t0", "alpha", "power n")}
    finally:
        _shot(page, "02_schedule_tuner")
        page.close()
    chosen = yaml.safe_load((out / "schedule_tuned.yaml").read_text())
    assert chosen["schedule_view"]["group_size"] == int(shown["G"]) == 4
    assert chosen["scaffold"]["t0"] == float(shown["t0"]) == 0.35
    assert chosen["scaffold"]["alpha"] == float(shown["alpha"])  # the readout's 3 figures, no float noise
    assert chosen["scaffold"]["power"] == float(shown["power n"])
    text = (out / "schedule_tuned.yaml").read_text()
    assert not re.search(r"\d\.\d{7,}", text.split("scaffold:")[1].split("\n\n")[0]), text


# --------------------------------------------------------------------------------------------
# 01: the example browser
# --------------------------------------------------------------------------------------------


def test_example_browser_shows_another_example_when_its_control_moves(browser, lab, tmp_path):
    page = _open(browser, lab, _copy_notebook(lab, "01_rubric_exploration", {"output_dir": str(tmp_path / "01")}))
    try:
        _run_widgets_notebook(page, lab, ".ruscarl-example-browser h3")
        heading = page.locator(".ruscarl-example-browser h3").first
        heading.wait_for()
        first = heading.inner_text()
        _set_slider(page, "example", 3)
        page.wait_for_function(
            "(old) => { const h = document.querySelector('.ruscarl-example-browser h3');"
            " return h && h.innerText.trim() && h.innerText.trim() !== old; }", arg=first.strip())
        second = page.locator(".ruscarl-example-browser h3").first.inner_text()
    finally:
        _shot(page, "01_example_browser")
        page.close()
    from ruscarl_lib.data.read import load_sample_dataset

    examples = load_sample_dataset()  # the notebook's data when no path is given
    assert first.strip() == examples[0].id and second.strip() == examples[3].id


# --------------------------------------------------------------------------------------------
# 03: live training curves
# --------------------------------------------------------------------------------------------


def test_training_notebook_updates_its_live_view_while_training(browser, lab, tmp_path):
    from ruscarl_lib.data.write import write_jsonl
    from ruscarl_lib.params import save_params
    from ruscarl_lib.models.tiny import save_tiny_model
    from ruscarl_lib.train.smoke_task import rule_examples, toy_params

    params = toy_params(save_tiny_model(tmp_path / "model"), tmp_path / "runs", "live", max_steps=6)
    params.data.path = str(write_jsonl(rule_examples(4), tmp_path / "toy.jsonl"))
    params.judge.cache_path = None
    params_file = save_params(params, tmp_path / "toy.yaml")
    page = _open(browser, lab, _copy_notebook(lab, "03_train_grpo", {
        "params_file": str(params_file), "run_name": "live", "table_every": 1}))
    try:
        _run_all(page)
        seen_steps, seen_points = set(), set()
        finished = page.locator(".jp-OutputArea-output", has_text=re.compile(r"finished \d+ RL steps"))
        deadline = time.monotonic() + RUN_TIMEOUT_MS / 1000
        # follow the live view until the run ends: its step counter and the points drawn
        while finished.count() == 0:
            state = page.wait_for_function("""(seen) => {
                const view = document.querySelector('.ruscarl-live');
                const done = [...document.querySelectorAll('.jp-OutputArea-output')]
                    .some(o => /finished \\d+ RL steps/.test(o.textContent));
                if (!view) return done ? {step: null, points: null, done} : false;
                const m = view.textContent.match(/RL step (\\d+)/);
                const step = m ? Number(m[1]) : null;
                const p = view.textContent.match(/curves of (\\d+) logged steps/);
                const points = p ? Number(p[1]) : null;
                if (done || (step !== null && !seen.includes(step))) return {step, points, done};
                return false;
            }""", arg=sorted(seen_steps), timeout=RUN_TIMEOUT_MS).json_value()
            if state["step"] is not None and not state["done"]:
                seen_steps.add(state["step"])
                seen_points.add(state["points"])
            assert time.monotonic() < deadline, "training did not finish"
            if state["done"]:
                break
        _wait_done(page, lab)
    finally:
        _shot(page, "03_live_training")
        page.close()
    # the view changed at least twice while the run was going, with more points drawn later
    assert len(seen_steps) >= 2, seen_steps
    points = sorted(p for p in seen_points if p is not None)
    assert len(points) >= 2 and points[-1] > points[0], seen_points
    summary = json.loads((tmp_path / "runs" / "live" / "summary.json").read_text())
    assert summary["rl_steps"] == 6


# --------------------------------------------------------------------------------------------
# The report's first screen
# --------------------------------------------------------------------------------------------


def test_report_opens_on_its_headline_table(browser, tmp_path):
    from ruscarl_lib.demo import run_demo

    headline = run_demo(tmp_path / "demo", suite="foundation", progress=False)
    page = browser.new_page()
    try:
        page.goto(Path(headline["report"]).as_uri())
        table = page.locator("#headline")
        table.wait_for()
        box = table.bounding_box()
        _shot(page, "report_first_screen")
        assert page.evaluate("window.scrollY") == 0
        assert box["y"] >= 0 and box["y"] + box["height"] <= 800, box  # all of it on the first screen
        assert page.locator(".jp-CodeCell .jp-Cell-inputWrapper").first.is_hidden()  # code hidden ...
        page.locator("#ruscarl-show-code").check()
        assert page.locator(".jp-CodeCell .jp-Cell-inputWrapper").first.is_visible()  # ... until asked for
        alts = page.locator("img").evaluate_all("imgs => imgs.map(i => i.alt)")
        assert alts and all(a.strip() for a in alts)
    finally:
        page.close()
