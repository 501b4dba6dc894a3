#!/usr/bin/env bash
# Set up the environment, then run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Exit code 5 ("no tests ran") is non-zero and so fails like any other failure.
exec .venv/bin/python -m pytest "$@"
