#!/usr/bin/env bash
# GPU smoke check of RuscaRL training, one command, meant to finish in under 4 minutes.
#
# The machine it expects: one NVIDIA GPU (sized for an H200; the run needs well under 2 GiB),
# no network, Python 3.12 with torch (CUDA build), transformers 5.17, peft and accelerate
# preinstalled, and no TRL, vLLM or Unsloth. What is missing travels in
# outputs/gpu_wheels/site.tar.gz, built beforehand on any machine with network by
#   python scripts/prepare_gpu_wheels.py
# (Python 3.12 wheels, stripped; repository + archive under 64 MiB). Nothing is pip-installed:
# the archive is unpacked to a temporary folder and only the distributions this Python lacks
# go on PYTHONPATH, after the repository (the project's own torch pin does not apply here).
#
# It runs scripts/gpu_smoke.py once per backend, each in its own process (Unsloth rebinds TRL's
# trainer process-wide): a tiny Qwen2-shaped model on CUDA, a few RL steps with scaffolds on and
# off, the trainer's base class asserted (Unsloth's for the Unsloth backend), the run-time and
# offline clean-prompt contract checks, step times and peak GPU memory; all results in one JSON.
#
# Usage: scripts/gpu_smoke.sh [--out DIR] [--steps N] [--device cpu]
#   PYTHON=python3.12          the interpreter (default python3)
#   SMOKE_BACKENDS="transformers unsloth"   which backends, in this order
#   --device cpu               check the script itself on a CPU machine (no GPU claims then)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
OUT=outputs/gpu_smoke
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
ARCHIVE=outputs/gpu_wheels/site.tar.gz
SITE="${RUSCARL_GPU_SITE:-${TMPDIR:-/tmp}/ruscarl_gpu_site}"
start=$(date +%s)

if [ ! -f "$ARCHIVE" ]; then
  echo "missing $ARCHIVE: run 'python scripts/prepare_gpu_wheels.py' (needs network) first" >&2
  exit 2
fi
rm -rf "$SITE" && mkdir -p "$SITE"
tar -xzf "$ARCHIVE" -C "$SITE"
# Link into $SITE/use only what this Python lacks (and what differs in major version).
"$PY" - "$SITE" <<'PY'
import importlib.metadata as md, importlib.util, json, os, sys
site = sys.argv[1]
manifest = json.load(open(os.path.join(site, "site", "ruscarl_gpu_manifest.json")))
use = os.path.join(site, "use"); os.makedirs(use)
shipped, kept = [], []
for dist, info in manifest["distributions"].items():
    wheel_version = info["wheel"].split("-")[1]
    try:
        have = md.version(dist)
    except md.PackageNotFoundError:
        have = None
    if have is not None and importlib.util.find_spec(info["import"]) is not None \
            and have.split(".")[0] == wheel_version.split(".")[0]:
        kept.append(f"{dist}=={have}")
        continue
    for entry in info["entries"]:
        os.symlink(os.path.join(site, "site", entry), os.path.join(use, entry))
    shipped.append(f"{dist}=={wheel_version}")
print("[gpu-smoke] from the archive:", " ".join(shipped))
print("[gpu-smoke] already here:    ", " ".join(kept) or "-")
PY
export PYTHONPATH="$PWD:$SITE/use"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRL_EXPERIMENTAL_SILENCE=1
export UNSLOTH_COMPILE_LOCATION="$SITE/unsloth_compiled_cache" TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"

"$PY" - <<'PY'
import importlib, sys
import torch
print(f"[gpu-smoke] python {sys.version.split()[0]} torch {torch.__version__} cuda {torch.version.cuda} "
      f"available {torch.cuda.is_available()}"
      + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""))
missing = []
for mod in ("transformers", "peft", "accelerate", "datasets", "pyarrow", "pandas", "pydantic", "yaml", "trl"):
    try:
        importlib.import_module(mod)
    except Exception as err:
        missing.append(f"{mod} ({type(err).__name__}: {err})")
if missing:
    sys.exit("[gpu-smoke] cannot import: " + "; ".join(missing))
PY

status=0
for backend in ${SMOKE_BACKENDS:-transformers unsloth}; do
  echo "== $backend backend"
  timeout 200 "$PY" scripts/gpu_smoke.py --backend "$backend" --out "$OUT/runs" \
    --json "$OUT/$backend.json" ${ARGS[@]+"${ARGS[@]}"} > "$OUT/$backend.log" 2>&1 || status=1
  tail -n 60 "$OUT/$backend.log" | grep -v "it/s\]" || true
done

"$PY" - "$OUT" "$status" "$(( $(date +%s) - start ))" <<'PY'
import json, os, sys
out, status, wall = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
res = {"ok": status == 0, "wall_s": wall, "backends": {}}
for backend in os.environ.get("SMOKE_BACKENDS", "transformers unsloth").split():
    path = os.path.join(out, f"{backend}.json")
    res["backends"][backend] = json.load(open(path)) if os.path.exists(path) else {"error": f"no result, see {backend}.log"}
json.dump(res, open(os.path.join(out, "gpu_smoke.json"), "w"), indent=2)
print("[gpu-smoke] summary:")
for backend, r in res["backends"].items():
    for arm, a in (r.get("arms") or {}).items():
        print(f"  {backend:12s} {arm:13s} " + (a["error"] if "error" in a else
              f"base={a['base_class']} median_step={a['median_step_s_after_first']}s "
              f"peak={a['peak_cuda_mib']}MiB live_contract_rows={a['live_contract']['loss_rows']}"))
    if "error" in r:
        print(f"  {backend:12s} {r['error']}")
print(f"[gpu-smoke] {'OK' if res['ok'] else 'FAILED'} in {wall}s; results in {out}/gpu_smoke.json")
PY
exit $status
