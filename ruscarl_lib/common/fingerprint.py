"""Content fingerprints: what a result was made from, so a rerun can tell whether it may reuse it.

Why: a run folder, an evaluation folder or a demo stage is reused when it is asked for again.
Reuse is only honest when the inputs are the same *content*, not the same names: a run folder
rerun with 3x the learning rate, an adapter path holding new weights, or a params file edited
in place must not return the old result. Everything here hashes content (canonical JSON,
file bytes, tensor bytes) and never a commit id, which would invalidate every run at every
commit.

A training fingerprint is a flat dict of dotted keys (`train.learning_rate`, `data.content`,
`model.weights`, `library.version`, ...) so a refusal can name what changed. It holds every
params key except those listed in `NOT_TRAINING_KEYS` (where a run is written, how often it
checkpoints or logs, how the judge is reached but not what it answers), so a key added to the
schema later joins it automatically. A key missing from an older fingerprint counts as
unchanged when the new value is the schema default (a new option whose default keeps the old
behaviour).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ruscarl_lib.common.paths import atomic_write_text, resolve_path

log = logging.getLogger(__name__)

FINGERPRINT_FILE = "fingerprint.json"

# Params keys (dotted prefixes) that do not change what training computes.
NOT_TRAINING_KEYS: tuple[str, ...] = (
    "output",                 # where the run is written (the folder itself)
    "eval",                   # evaluation after training
    "schedule_view",          # the schedule notebook's view only
    "sandbox.cache_dir",      # where built sandbox policies are cached
    "data.path",              # replaced by the data content digest
    "data.path_env",
    "train.model",            # replaced by the model identity (weights digest for a local folder)
    "train.resume",           # how to treat the folder, not what to train
    "train.save_steps",       # checkpoint cadence
    "train.save_total_limit",
    "train.logging_steps",
    "train.log_rollouts",
    "train.report_to",
    "judge.cache_path",       # a cache returns what the judge would answer
    "judge.max_concurrency",
    "judge.http_backend",
    "judge.routing",
)


# Keys a fingerprint adds to the params view (absent from a bare params.yaml).
_CONTENT_KEYS = ("data.content", "model.weights", "reward.funcs", "library.version")


class RunSettingsChanged(RuntimeError):
    """A run folder holds a run made with other settings; the message names the changed keys."""


# --------------------------------------------------------------------------------------------
# Digests
# --------------------------------------------------------------------------------------------


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def digest(value: Any) -> str:
    """sha256 of the canonical JSON of `value`."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def _update_with_file(h: "hashlib._Hash", path: Path) -> None:
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)


_FILE_MEMO: dict[tuple[str, int, int], str] = {}


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes (memoised per process on path, size and mtime)."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _FILE_MEMO:
        h = hashlib.sha256()
        _update_with_file(h, p)
        _FILE_MEMO[key] = h.hexdigest()
    return _FILE_MEMO[key]


def tree_digest(folder: str | Path) -> str:
    """sha256 over every file below `folder` (relative name and bytes), hidden files left out.

    Symlinks are followed, so a hub snapshot folder (links into a blob store) hashes its
    content."""
    root = Path(folder)
    h = hashlib.sha256()
    files = sorted(p for p in root.rglob("*")
                   if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))
    for p in files:
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        h.update(file_digest(p).encode())
    return h.hexdigest()


def path_digest(path: str | Path) -> str:
    p = Path(path)
    return tree_digest(p) if p.is_dir() else file_digest(p)


def model_identity(name: str | None) -> str | None:
    """`sha256:<digest>` of a local model/adapter folder or file, else the hub id itself."""
    if not name:
        return None
    from ruscarl_lib.models.local import is_local_model, local_model_identity

    if is_local_model(name):
        return local_model_identity(name)
    local = resolve_path(name)
    if local.exists():
        return "sha256:" + path_digest(local)
    return f"hub:{name}"


def module_weights_digest(module: Any) -> str:
    """sha256 over a torch module's state dict (names, dtypes, shapes, bytes): the weights in
    memory, for models handed over already loaded."""
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        h.update(t.contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def examples_digest(examples: Iterable[Any]) -> str:
    """sha256 over training examples (RubricExample via `to_dict`, or dataset rows as dicts)."""
    h = hashlib.sha256()
    for ex in examples:
        record = ex.to_dict() if hasattr(ex, "to_dict") else dict(ex)
        h.update(canonical_json(record).encode() + b"\n")
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Flat dotted views
# --------------------------------------------------------------------------------------------


def flatten(value: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values."""
    out: dict[str, Any] = {}
    for k, v in value.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _excluded(key: str, excluded: Sequence[str]) -> bool:
    return any(key == e or key.startswith(e + ".") for e in excluded)


def training_params_view(params: Any) -> dict[str, Any]:
    """The params keys that change training, flat and JSON-normalised."""
    flat = flatten(json.loads(canonical_json(params.model_dump(mode="json"))))
    return {k: v for k, v in flat.items() if not _excluded(k, NOT_TRAINING_KEYS)}


def _library_version() -> str:
    from ruscarl_lib import __version__

    return __version__


def training_fingerprint(
    params: Any,
    *,
    data: Iterable[Any],
    model: Any = None,
    reward_funcs: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """Every input that changes a training run, as dotted keys.

    `data`: the training examples (or dataset rows) as given to the trainer; `model`: a model
    already loaded in memory (hashed by its weights) or None (then `train.model` is identified
    by its folder's content, or by its hub id); `reward_funcs`: custom reward callables, named.
    """
    fp = training_params_view(params)
    fp["data.content"] = examples_digest(data)
    if model is not None:
        fp["model.weights"] = "sha256:" + module_weights_digest(model)
    else:
        fp["model.weights"] = model_identity(params.train.model)
    if reward_funcs is not None:
        fp["reward.funcs"] = [getattr(f, "__qualname__", type(f).__qualname__) for f in reward_funcs]
    fp["library.version"] = _library_version()
    return fp


# --------------------------------------------------------------------------------------------
# Run folders
# --------------------------------------------------------------------------------------------


def _schema_defaults() -> dict[str, Any]:
    from ruscarl_lib.params import Params

    return training_params_view(Params())


def changed_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, old, new) for every key whose value differs. A key only one side has counts as
    unchanged when the other side would hold the schema default."""
    defaults = _schema_defaults()
    missing = object()
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, missing), new.get(key, missing)
        if a is missing and key in defaults and b == defaults[key]:
            continue
        if b is missing and key in defaults and a == defaults[key]:
            continue
        if a != b:
            out.append((key, None if a is missing else a, None if b is missing else b))
    return out


def _short(v: Any) -> str:
    text = canonical_json(v) if not isinstance(v, str) else v
    return text if len(text) <= 60 else text[:28] + "..." + text[-20:]


def describe_changes(changes: Sequence[tuple[str, Any, Any]]) -> str:
    return "\n".join(f"  {k}: {_short(a)} -> {_short(b)}" for k, a, b in changes)


def read_fingerprint(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / FINGERPRINT_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())["values"]


def write_fingerprint(run_dir: str | Path, fingerprint: Mapping[str, Any]) -> Path:
    payload = {"hash": digest(fingerprint), "values": dict(fingerprint)}
    return atomic_write_text(Path(run_dir) / FINGERPRINT_FILE, json.dumps(payload, indent=2, default=str) + "\n")


def check_run_folder(run_dir: str | Path, fingerprint: Mapping[str, Any], params_file: str = "params.yaml") -> None:
    """Refuse to continue a run folder whose run was made with other settings.

    A folder from before fingerprints existed is compared through its params.yaml (data and
    model content cannot be checked then; a warning says so).
    """
    run_dir = Path(run_dir)
    old = read_fingerprint(run_dir)
    legacy = False
    if old is None:
        saved = run_dir / params_file
        if not saved.is_file():
            return
        from ruscarl_lib.params import load_params

        old = training_params_view(load_params(saved))
        new = {k: v for k, v in fingerprint.items() if k not in _CONTENT_KEYS}
        legacy = True
    else:
        new = dict(fingerprint)
    changes = changed_keys(old, new)
    if changes:
        raise RunSettingsChanged(
            f"{run_dir} holds a run trained with other settings; refusing to continue it "
            f"(changed: {', '.join(k for k, _, _ in changes)}):\n{describe_changes(changes)}\n"
            "Use another output.run_name, or start this folder afresh (its checkpoints, metrics and "
            "rollouts are deleted) with train.resume=false: `--fresh` on the command line, "
            "`fresh=True` in notebook 03."
        )
    if legacy:
        log.warning("%s has no %s (made by an older version): only its params were compared, "
                    "not its data or model content", run_dir, FINGERPRINT_FILE)
