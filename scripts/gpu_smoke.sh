#!/usr/bin/env bash
# GPU smoke check: a few RuscaRL steps of a tiny local model on CUDA, with the transformers
# backend and, when Unsloth imports, with Unsloth; prints step times and the clean-prompt
# contract check. Usage: scripts/gpu_smoke.sh [--steps N]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
[ -x .venv/bin/python ] && PY="${PYTHON:-.venv/bin/python}"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
status=0
echo "== transformers backend"
"$PY" scripts/gpu_smoke.py --backend transformers "$@" || status=1
if "$PY" -c "import unsloth" >/dev/null 2>&1; then
  echo "== unsloth backend"
  "$PY" scripts/gpu_smoke.py --backend unsloth "$@" || status=1
else
  echo "== unsloth backend: not installed here (pip install -e '.[gpu]'), skipped"
fi
exit $status
