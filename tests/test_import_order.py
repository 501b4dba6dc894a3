"""Unsloth is imported before transformers, TRL and PEFT by every entry point that can train.

Unsloth patches those libraries when it is imported; imported after them, it silently patches
less (and `trl.GRPOTrainer` may already be bound elsewhere). Each entry point runs here in its
own process with a stand-in `unsloth` package first on the path: importing it records which of
transformers/trl/peft were already loaded, then ends the process (exit 0), so nothing trains.
The entry points: `python -m ruscarl_lib.train.run`, the `ruscarl train` CLI, the training
notebook's setup cells (sweeps and the demo run that notebook through papermill, in a kernel
that executes exactly these cells), and the GPU smoke script.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WATCHED = ("transformers", "trl", "peft")

FAKE_UNSLOTH = textwrap.dedent(
    """
    import json, os, sys
    late = [m for m in %r if m in sys.modules]
    with open(os.environ["FAKE_UNSLOTH_RECORD"], "w") as fh:
        json.dump({"late": late}, fh)
    raise SystemExit(0)  # stop the entry point here: the order is all this test is about
    """
    % (WATCHED,)
)


@pytest.fixture()
def fake_unsloth(tmp_path):
    pkg = tmp_path / "fake" / "unsloth"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(FAKE_UNSLOTH)
    return tmp_path / "fake"


def _run(fake: Path, record: Path, argv: list[str], cwd: Path = ROOT) -> dict:
    env = {**os.environ, "FAKE_UNSLOTH_RECORD": str(record), "TRL_EXPERIMENTAL_SILENCE": "1",
           "PYTHONPATH": os.pathsep.join([str(fake), str(ROOT)])}
    proc = subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert record.exists(), "the entry point never imported unsloth:\n" + proc.stderr[-2000:]
    return json.loads(record.read_text())


def test_probe_sees_a_late_import(fake_unsloth, tmp_path):
    """The probe itself: importing transformers first is reported."""
    rec = _run(fake_unsloth, tmp_path / "r.json",
               ["-c", "import transformers\nimport unsloth"])
    assert rec["late"] == ["transformers"]


def test_training_module_imports_unsloth_first(fake_unsloth, tmp_path):
    rec = _run(fake_unsloth, tmp_path / "r.json",
               ["-m", "ruscarl_lib.train.run", "--set", "train.backend=unsloth",
                "--set", f"output.dir={tmp_path}"])
    assert rec["late"] == []


def test_cli_train_imports_unsloth_first(fake_unsloth, tmp_path):
    rec = _run(fake_unsloth, tmp_path / "r.json",
               ["-m", "ruscarl_lib.cli", "train", "--set", "train.backend=unsloth",
                "--set", f"output.dir={tmp_path}"])
    assert rec["late"] == []


def _training_notebook_setup_source() -> tuple[str, str]:
    nb = json.loads((ROOT / "notebooks" / "03_train_grpo.ipynb").read_text())
    cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    setup = next(i for i, src in enumerate(cells) if "notebook_setup(" in src)
    return "\n".join(cells[:setup]), cells[setup]


def test_training_notebook_imports_unsloth_first(fake_unsloth, tmp_path):
    """The notebook's parameters and import/setup cells, as papermill's kernel runs them (a
    sweep or the demo runs this notebook the same way), with a params file on backend unsloth."""
    import yaml

    from ruscarl_lib.params import load_params

    raw = load_params(ROOT / "params" / "default.yaml").model_dump(mode="json")
    raw["train"]["backend"] = "unsloth"
    raw["output"]["dir"] = str(tmp_path / "out")
    params_file = tmp_path / "unsloth.yaml"
    params_file.write_text(yaml.safe_dump(raw))
    before, setup = _training_notebook_setup_source()
    script = tmp_path / "cells.py"
    script.write_text(before + f"\nparams_file = {str(params_file)!r}\n" + setup)
    rec = _run(fake_unsloth, tmp_path / "r.json", [str(script)])
    assert rec["late"] == []


def test_gpu_smoke_script_imports_unsloth_first(fake_unsloth, tmp_path):
    rec = _run(fake_unsloth, tmp_path / "r.json",
               [str(ROOT / "scripts" / "gpu_smoke.py"), "--backend", "unsloth", "--out", str(tmp_path)])
    assert rec["late"] == []


def test_light_modules_do_not_load_the_training_stack():
    """What the entry points import before the backend is known must not load the stack."""
    code = ("import sys\n"
            "import ruscarl_lib.notebook.setup, ruscarl_lib.train.run, ruscarl_lib.cli, ruscarl_lib.sweeps.run,"
            " ruscarl_lib.demo, ruscarl_lib.notebook.live, ruscarl_lib.train.run_folder, ruscarl_lib.data.read,"
            " ruscarl_lib.notebook.figures, ruscarl_lib.notebook.reports, ruscarl_lib.train.checks\n"
            f"print([m for m in {WATCHED!r} if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"
