"""CPU preparation step of the GPU smoke check: the packages the GPU machine lacks, in one archive.

The GPU machine it prepares for: one NVIDIA GPU, no network, Python 3.12 with torch (CUDA),
transformers 5.17, peft and accelerate preinstalled, and no TRL, vLLM or Unsloth. Whatever else
the smoke check imports travels as Python 3.12 wheels, downloaded here (`pip download
--python-version 3.12 --only-binary=:all: --no-deps`, pinned), unpacked into one flat
site-packages tree, stripped of what the trainer never loads, and packed into
`outputs/gpu_wheels/site.tar.gz` (git-ignored) with a manifest. The repository plus that archive
must stay under the machine's 64 MiB transfer limit; this script checks it and fails otherwise.
On the machine, scripts/gpu_smoke.sh unpacks it and puts on PYTHONPATH only the distributions
the machine does not already have (no `pip install`: the project's torch pin does not match).

    python scripts/prepare_gpu_wheels.py [--out outputs/gpu_wheels] [--limit-mib 64]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: (pip requirement, import name). TRL, Unsloth and its zoo are what the machine lacks for sure;
#: the rest are what they and the repository import that a torch + transformers + peft +
#: accelerate install does not bring (datasets and its pyarrow/pandas, pydantic for the params,
#: tyro/msgspec/torchao/... for Unsloth). Pins follow pyproject.toml and the Unsloth lane.
PACKAGES: list[tuple[str, str]] = [
    ("trl==1.15.0", "trl"),
    ("unsloth==2026.10.9", "unsloth"),
    ("unsloth_zoo==2026.10.9", "unsloth_zoo"),
    ("datasets==4.8.5", "datasets"),
    ("pyarrow==22.0.0", "pyarrow"),
    ("pandas==2.3.3", "pandas"),
    ("python-dateutil==2.9.0.post0", "dateutil"),
    ("six==1.17.0", "six"),  # python-dateutil 2.x imports it
    ("pytz==2025.2", "pytz"),
    ("tzdata==2025.2", "tzdata"),
    ("dill==0.4.1", "dill"),
    ("multiprocess==0.70.19", "multiprocess"),
    ("xxhash==4.1.0", "xxhash"),
    ("fsspec==2026.2.0", "fsspec"),
    ("pydantic==2.14.3", "pydantic"),
    ("pydantic_core==2.50.5", "pydantic_core"),
    ("annotated-types==0.8.0", "annotated_types"),
    ("typing-inspection==0.4.5", "typing_inspection"),
    ("tyro==1.0.17", "tyro"),
    ("docstring_parser==0.18.0", "docstring_parser"),
    ("typeguard==4.6.1", "typeguard"),
    ("shtab==1.13.0", "shtab"),
    ("msgspec==0.23.0", "msgspec"),
    ("cut_cross_entropy==25.1.1", "cut_cross_entropy"),
    ("torchao==0.18.0", "torchao"),
    ("einops==0.8.2", "einops"),
    ("sentencepiece==0.2.3", "sentencepiece"),
]

#: What is left out of the archive, and why (paths inside the unpacked site-packages).
STRIP: list[tuple[str, str]] = [
    ("studio", "Unsloth Studio, the web UI (25 MiB of its 28 MiB wheel); the trainer never imports it"),
    ("unsloth_cli", "Unsloth's command line; not used"),
    ("pyarrow/libarrow_flight.so*", "Arrow Flight RPC (9 MiB); only `import pyarrow.flight` loads it"),
    ("pyarrow/_flight*.so", "the Flight bindings, see above"),
    ("pyarrow/libarrow_substrait.so*", "Substrait query plans; only `pyarrow.substrait` loads it"),
    ("pyarrow/_substrait*.so", "the Substrait bindings, see above"),
    ("pyarrow/tests", "pyarrow's own test suite"),
    ("pyarrow/include", "C++ headers for building extensions"),
    ("pyarrow/src", "C++ sources for building extensions"),
    ("pandas/tests", "pandas' own test suite"),
    ("**/__pycache__", "bytecode caches (rebuilt on the machine)"),
]

#: Never shipped: on the machine already, or not needed by the smoke check.
NOT_SHIPPED = {
    "torch, triton": "preinstalled with the CUDA build of torch",
    "transformers, peft, accelerate (and their deps: numpy, safetensors, tokenizers, "
    "huggingface_hub, pyyaml, tqdm, packaging, regex, requests, filelock, jinja2, psutil)": "preinstalled",
    "vllm": "the smoke check generates with HF generate (fast_inference off)",
    "bitsandbytes": "4-bit loading is not part of the smoke check (Unsloth runs without it)",
    "xformers, diffusers, torchvision": "Unsloth imports them only if present; not needed for text GRPO",
    "aiohttp": "only for fsspec's HTTP file system; nothing is fetched",
}


def _download(reqs: list[str], dest: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--python-version", "3.12", "--implementation", "cp", "--abi", "cp312", "--abi", "abi3",
           "--abi", "none", "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_27_x86_64",
           "--platform", "manylinux_2_24_x86_64", "--platform", "manylinux_2_17_x86_64",
           "--platform", "manylinux2014_x86_64", "--platform", "any", "-d", str(dest), *reqs]
    subprocess.run(cmd, check=True)


def _tracked_bytes() -> int:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return sum((ROOT / f).stat().st_size for f in files.decode().split("\0") if f and (ROOT / f).is_file())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "outputs" / "gpu_wheels"))
    ap.add_argument("--limit-mib", type=float, default=64.0)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        wheels, site = Path(tmp) / "wheels", Path(tmp) / "site"
        wheels.mkdir()
        site.mkdir()
        _download([r for r, _ in PACKAGES], wheels)
        dists: dict[str, dict] = {}
        for whl in sorted(wheels.glob("*.whl")):
            with zipfile.ZipFile(whl) as z:
                names = z.namelist()
                z.extractall(site)
            top = sorted({n.split("/")[0] for n in names})
            dist = whl.name.split("-")[0].lower().replace("_", "-")
            dists[dist] = {"wheel": whl.name, "wheel_bytes": whl.stat().st_size, "entries": top}
        removed: list[dict] = []
        for pattern, why in STRIP:
            hits = [p for p in site.glob(pattern)]
            size = sum(f.stat().st_size for h in hits for f in ([h] if h.is_file() else h.rglob("*")) if f.is_file())
            for h in hits:
                shutil.rmtree(h) if h.is_dir() else h.unlink()
            removed.append({"path": pattern, "why": why, "files": len(hits), "bytes": size})
        for info in dists.values():
            info["entries"] = [e for e in info["entries"] if (site / e).exists()]
        imports = {r.split("==")[0].lower().replace("_", "-"): imp for r, imp in PACKAGES}
        for dist, info in dists.items():
            info["import"] = imports.get(dist, dist.replace("-", "_"))
        manifest = {"python": "3.12", "distributions": dists, "stripped": removed, "not_shipped": NOT_SHIPPED}
        (site / "ruscarl_gpu_manifest.json").write_text(json.dumps(manifest, indent=2))
        archive = out / "site.tar.gz"
        with tarfile.open(archive, "w:gz", compresslevel=9) as tar:
            tar.add(site, arcname="site")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    repo, packed = _tracked_bytes(), archive.stat().st_size
    total = (repo + packed) / 2**20
    print(json.dumps({"archive": str(archive.relative_to(ROOT)) if archive.is_relative_to(ROOT) else str(archive),
                      "archive_mib": round(packed / 2**20, 2), "repo_mib": round(repo / 2**20, 2),
                      "total_mib": round(total, 2), "limit_mib": args.limit_mib,
                      "distributions": len(dists),
                      "stripped_mib": round(sum(r["bytes"] for r in removed) / 2**20, 2)}))
    if total >= args.limit_mib:
        print(f"repository + archive = {total:.1f} MiB, over the {args.limit_mib} MiB limit", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
