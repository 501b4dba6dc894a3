"""Content fingerprints: flat dotted keys, defaults for keys added later, the library version."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ruscarl_lib import __version__
from ruscarl_lib.common.fingerprint import (
    RunSettingsChanged,
    changed_keys,
    check_run_folder,
    model_identity,
    training_fingerprint,
    write_fingerprint,
)
from ruscarl_lib.params import Params, save_params
from ruscarl_lib.train.smoke_task import make_examples

ROOT = Path(__file__).resolve().parents[1]


def test_version_matches_pyproject():
    text = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^version = "([^"]+)"', text, re.M).group(1) == __version__


def _fp(params: Params, n: int = 3):
    return training_fingerprint(params, data=make_examples(n))


def test_fingerprint_keys_and_exclusions():
    fp = _fp(Params())
    assert fp["train.learning_rate"] == 1e-6 and fp["scaffold.t0"] == 0.2 and fp["seed"] == 0
    assert fp["library.version"] == __version__ and fp["model.weights"] == "hub:Qwen/Qwen2.5-7B-Instruct"
    assert not any(k.startswith(("output.", "eval.")) or k in ("train.save_steps", "train.resume") for k in fp)
    p = Params()
    p.output.run_name = "elsewhere"
    p.train.logging_steps = 7
    p.judge.cache_path = None
    assert changed_keys(_fp(Params()), _fp(p)) == []
    assert _fp(Params(), 3)["data.content"] != _fp(Params(), 4)["data.content"]


def test_key_added_later_at_its_default_is_not_a_change():
    new = _fp(Params())
    old = {k: v for k, v in new.items() if k != "train.top_k"}  # as if top_k did not exist yet
    assert changed_keys(old, new) == []
    p = Params()
    p.train.top_k = 5
    assert changed_keys(old, _fp(p)) == [("train.top_k", None, 5)]


def test_local_model_identity_is_its_content(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "w.bin").write_bytes(b"abc")
    a = model_identity(str(tmp_path / "m"))
    (tmp_path / "m" / "w.bin").write_bytes(b"abd")
    assert a.startswith("sha256:") and model_identity(str(tmp_path / "m")) != a


def test_legacy_folder_is_compared_through_its_params(tmp_path):
    old = Params()
    save_params(old, tmp_path / "params.yaml")
    check_run_folder(tmp_path, _fp(old))
    new = Params()
    new.scaffold.alpha = 50.0
    with pytest.raises(RunSettingsChanged, match=r"scaffold\.alpha: 125\.0 -> 50\.0"):
        check_run_folder(tmp_path, _fp(new))
    write_fingerprint(tmp_path, _fp(new))
    check_run_folder(tmp_path, _fp(new))
