#!/usr/bin/env bash
# Set up the environment, then run the main job: the notebook suite on the embedded CPU data.
# `--suite healthbench` (the real path) also sets up the vLLM CPU lane its judge server runs in.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
case " $* " in
  *" healthbench "*|*"--suite=healthbench"*) bash scripts/setup_vllm_lane.sh ;;
esac
exec .venv/bin/ruscarl demo "$@"
