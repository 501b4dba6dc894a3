#!/usr/bin/env bash
# The forced-Unsloth CPU lane's environment, `.venv-unsloth` (tests/test_unsloth_lane.py).
#
# Unsloth's wheel asks for xformers, bitsandbytes, torchvision, diffusers and a CUDA torch; none
# of that is needed to run Unsloth's *trainer rewrite* on CPU, and the CUDA torch alone is
# several GB. So unsloth and unsloth_zoo go in with --no-deps, on the project's own pins
# (torch 2.13 CPU build, transformers/trl/peft/accelerate/datasets as in pyproject.toml), plus
# only the packages their import and their GRPO patch need (triton, torchao, tyro, ...).
# Re-running is cheap: skipped while this script and pyproject.toml are unchanged.
# Usage: scripts/setup_unsloth_lane.sh   (PYTHON=python3.11, UNSLOTH_VENV=.venv-unsloth)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${UNSLOTH_VENV:-.venv-unsloth}"
UNSLOTH_PINS=(unsloth==2026.10.9 unsloth_zoo==2026.10.9)
# What unsloth / unsloth_zoo import on the CPU path and in their GRPO patch (not their
# GPU-only extras: xformers, bitsandbytes, diffusers, torchvision, vllm).
UNSLOTH_DEPS=(triton==3.9.0 torchao==0.18.0 cut_cross_entropy==25.1.1 tyro==1.0.17 psutil sentencepiece
  protobuf einops msgspec regex pillow packaging wheel hf_transfer typing_extensions requests)

start=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then
  echo "[unsloth-lane] creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.lane-installed"
want="$(cat pyproject.toml scripts/setup_unsloth_lane.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "[unsloth-lane] $VENV is up to date"
  exit 0
fi
# The project's pins for the packages the trainer needs (read from pyproject.toml, so the lane
# trains on the same transformers/trl/peft as the main environment).
mapfile -t CORE < <("$VENV/bin/python" - <<'PY'
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]
want = {"transformers", "trl", "peft", "accelerate", "datasets", "numpy", "pandas", "pyarrow",
        "pydantic", "pyyaml", "tqdm", "filelock"}
for d in deps["dependencies"]:
    if re.split(r"[<>=!~ ]", d)[0].lower() in want:
        print(d)
print(deps["optional-dependencies"]["cpu"][0])  # torch==2.13.0 (CPU build)
for d in deps["optional-dependencies"]["dev"]:
    print(d)
PY
)
echo "[unsloth-lane] installing ${CORE[*]}"
"$VENV/bin/python" -m pip install --quiet "${CORE[@]}"
echo "[unsloth-lane] installing ${UNSLOTH_DEPS[*]}"
"$VENV/bin/python" -m pip install --quiet "${UNSLOTH_DEPS[@]}" "${CORE[@]}"
echo "[unsloth-lane] installing ${UNSLOTH_PINS[*]} --no-deps"
"$VENV/bin/python" -m pip install --quiet --no-deps "${UNSLOTH_PINS[@]}"
"$VENV/bin/python" -c "import torch; assert torch.version.cuda is None, 'the lane must keep the CPU torch build'; print('[unsloth-lane] torch', torch.__version__)"
echo "$want" > "$stamp"
echo "[unsloth-lane] done in $(( $(date +%s) - start ))s"
