#!/usr/bin/env bash
# Create or refresh the project's virtual environment in .venv.
# CPU machines get the CPU build of torch (no multi-GB CUDA wheels); machines with an NVIDIA
# driver get the `gpu` extra (torch 2.14.0 + Unsloth + vLLM). Override with RUSCARL_EXTRA=cpu|gpu.
# Re-running is cheap: the install is skipped while pyproject.toml is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${RUSCARL_VENV:-.venv}"

if [ -z "${RUSCARL_EXTRA:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    RUSCARL_EXTRA=gpu
  else
    RUSCARL_EXTRA=cpu
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi

stamp="$VENV/.ruscarl-installed"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)-$RUSCARL_EXTRA"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "[setup] $VENV is up to date ($RUSCARL_EXTRA)"
  exit 0
fi

echo "[setup] installing ruscarl-lib[$RUSCARL_EXTRA,dev] into $VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -e ".[$RUSCARL_EXTRA,dev]"
echo "$want" > "$stamp"
echo "[setup] done"
