"""Getting the full HealthBench and cutting the paper's training split from it.

The paper trains on 4,500 HealthBench examples and evaluates on the other 500. Only the 500
held-out examples ship as a file (verl parquet, without HealthBench's prompt ids), so the
training split is the official 5,000-example JSONL minus every example whose conversation
matches a held-out one. Downloading is explicit: nothing here touches the network at import.
"""

from __future__ import annotations

import json
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence
from urllib.parse import urlparse

from ruscarl_lib.data.read import load_examples
from ruscarl_lib.data.rubric import RubricExample

HEALTHBENCH_URL = (
    "https://openaipublic.blob.core.windows.net/simple-evals/healthbench/"
    "2025-05-07-06-14-12_oss_eval.jsonl"
)
CACHE_ENV_VAR = "RUSCARL_CACHE_DIR"


class HealthBenchDownloadError(RuntimeError):
    """HealthBench could not be downloaded (offline, blocked, or a bad response)."""


def default_cache_dir() -> Path:
    """`$RUSCARL_CACHE_DIR`, else `~/.cache/ruscarl`."""
    env = os.environ.get(CACHE_ENV_VAR, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ruscarl"


def download_healthbench(
    cache_dir: str | Path | None = None,
    url: str = HEALTHBENCH_URL,
    timeout_s: float = 60.0,
    force: bool = False,
) -> Path:
    """Path of the cached HealthBench JSONL, downloading it first if needed.

    The file is written under a temporary name and renamed when complete, so an interrupted
    download never leaves a truncated file behind that later runs would trust.
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    name = Path(urlparse(url).path).name or "healthbench.jsonl"
    target = cache / name
    if target.exists() and target.stat().st_size > 0 and not force:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=cache)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout_s) as resp:
            while chunk := resp.read(1 << 20):
                out.write(chunk)
        if tmp.stat().st_size == 0:
            raise HealthBenchDownloadError(f"downloaded an empty file from {url}")
        os.replace(tmp, target)
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        raise HealthBenchDownloadError(
            f"could not download HealthBench from {url} ({err}). If this machine is offline, "
            f"download the file elsewhere and pass its local path instead (for example "
            f"data.path in the params, or the RUSCARL_HEALTHBENCH environment variable)."
        ) from err
    finally:
        if tmp.exists():
            tmp.unlink()
    return target


def load_healthbench(
    path: str | Path | None = None,
    cache_dir: str | Path | None = None,
    url: str = HEALTHBENCH_URL,
) -> list[RubricExample]:
    """The full HealthBench: from `path` if given, else from the cache or the download."""
    source = Path(path) if path is not None else download_healthbench(cache_dir, url)
    return load_examples(source)


def _match_key(example: RubricExample) -> str:
    """Conversation with all whitespace runs collapsed: robust to re-encoding between files."""
    return json.dumps(
        [[m["role"], " ".join(m["content"].split())] for m in example.messages],
        ensure_ascii=False,
    )


@dataclass
class SplitReport:
    """How the held-out set was matched against the full set."""

    n_full: int
    n_heldout: int
    n_matched: int
    n_removed: int
    n_train: int
    unmatched_ids: list[str] = field(default_factory=list)

    @property
    def n_unmatched(self) -> int:
        return len(self.unmatched_ids)

    def __str__(self) -> str:
        return (f"{self.n_full} full - {self.n_removed} held out = {self.n_train} train; "
                f"{self.n_matched}/{self.n_heldout} held-out examples matched, "
                f"{self.n_unmatched} unmatched")


class SplitError(ValueError):
    """Held-out examples could not all be found in the full set."""


def build_training_split(
    full_examples: Sequence[RubricExample],
    heldout_examples: Sequence[RubricExample],
    allow_unmatched: bool = False,
) -> tuple[list[RubricExample], SplitReport]:
    """The full set minus every example whose conversation appears in the held-out set.

    Matching is on the conversation (roles and whitespace-normalised text), because the
    held-out file carries no HealthBench ids. Raises SplitError when a held-out example has no
    match, unless `allow_unmatched=True` (then the report lists them).
    """
    full_keys = {_match_key(ex) for ex in full_examples}
    heldout_keys = set()
    unmatched = []
    for ex in heldout_examples:
        key = _match_key(ex)
        heldout_keys.add(key)
        if key not in full_keys:
            unmatched.append(ex.id)
    train = [ex for ex in full_examples if _match_key(ex) not in heldout_keys]
    report = SplitReport(
        n_full=len(full_examples),
        n_heldout=len(heldout_examples),
        n_matched=len(heldout_examples) - len(unmatched),
        n_removed=len(full_examples) - len(train),
        n_train=len(train),
        unmatched_ids=unmatched,
    )
    if unmatched and not allow_unmatched:
        shown = ", ".join(unmatched[:5]) + (" ..." if len(unmatched) > 5 else "")
        raise SplitError(f"{len(unmatched)} of {len(heldout_examples)} held-out examples are not "
                         f"in the full set (ids: {shown}); pass allow_unmatched=True to go on")
    return train, report
