#!/usr/bin/env bash
# Set up the environment, then run the main job: the notebook suite on the embedded CPU data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/ruscarl demo "$@"
