"""Downloading HealthBench (offline-safe) and cutting the 4,500 / 500 split."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace

import pytest

from rubric_files import healthbench_record, write_healthbench_jsonl, write_verl_dict_parquet
from ruscarl_lib.data.read import load_examples
from ruscarl_lib.data.healthbench import (
    HEALTHBENCH_URL,
    HealthBenchDownloadError,
    SplitError,
    build_training_split,
    download_healthbench,
    load_healthbench,
)


def test_url_is_the_official_file():
    assert HEALTHBENCH_URL == ("https://openaipublic.blob.core.windows.net/simple-evals/"
                               "healthbench/2025-05-07-06-14-12_oss_eval.jsonl")


def test_import_does_not_download():
    code = ("import urllib.request\n"
            "def refuse(*a, **k): raise SystemExit('network used at import')\n"
            "urllib.request.urlopen = refuse\n"
            "import ruscarl_lib.data.healthbench, ruscarl_lib.data.read\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_offline_download_fails_clearly(tmp_path):
    url = "http://127.0.0.1:9/healthbench.jsonl"
    with pytest.raises(HealthBenchDownloadError) as info:
        download_healthbench(cache_dir=tmp_path / "cache", url=url, timeout_s=5)
    assert url in str(info.value) and "local path" in str(info.value)
    assert os.listdir(tmp_path / "cache") == []  # no partial file left behind


def test_download_caches_and_is_atomic(tmp_path):
    source = write_healthbench_jsonl(tmp_path / "remote.jsonl",
                                     [healthbench_record(i) for i in range(4)])
    cache = tmp_path / "cache"
    path = download_healthbench(cache_dir=cache, url=source.as_uri())
    assert path == cache / "remote.jsonl"
    assert path.read_bytes() == source.read_bytes()
    assert os.listdir(cache) == ["remote.jsonl"]
    source.unlink()  # a second call must come from the cache
    assert download_healthbench(cache_dir=cache, url=source.as_uri()) == path
    assert [e.id for e in load_healthbench(cache_dir=cache, url=source.as_uri())] == [
        f"hb-{i:04d}" for i in range(4)]
    with pytest.raises(HealthBenchDownloadError):
        download_healthbench(cache_dir=cache, url=source.as_uri(), force=True)
    assert path.exists()  # a failed refresh keeps the cached copy


@pytest.fixture
def full_and_heldout(tmp_path):
    records = [healthbench_record(i) for i in range(30)]
    full_path = write_healthbench_jsonl(tmp_path / "full.jsonl", records)
    heldout = [records[i] for i in (1, 6, 9, 17, 28)]
    for r in heldout:  # the held-out file re-encodes whitespace differently
        r["prompt"][-1]["content"] = "  " + r["prompt"][-1]["content"].replace(" ", "\n ") + "\n"
    heldout_path = write_verl_dict_parquet(tmp_path / "heldout.parquet", heldout)
    return load_examples(full_path), load_examples(heldout_path)


def test_training_split_removes_the_held_out_conversations(full_and_heldout):
    full, heldout = full_and_heldout
    train, report = build_training_split(full, heldout)
    assert len(train) == 25
    assert {e.id for e in full} - {e.id for e in train} == {
        f"hb-{i:04d}" for i in (1, 6, 9, 17, 28)}
    assert (report.n_full, report.n_heldout, report.n_matched, report.n_unmatched,
            report.n_removed, report.n_train) == (30, 5, 5, 0, 5, 25)
    assert "25 train" in str(report)


def test_training_split_unmatched(full_and_heldout):
    full, heldout = full_and_heldout
    stranger = _stranger(heldout[0], "Something never asked before")
    with pytest.raises(SplitError, match=r"1 of 6 held-out examples are not in the full set"):
        build_training_split(full, heldout + [stranger])
    train, report = build_training_split(full, heldout + [stranger], allow_unmatched=True)
    assert len(train) == 25
    assert report.n_matched == 5 and report.unmatched_ids == [stranger.id]


def _stranger(template, text):
    return replace(template, id="stranger", messages=[{"role": "user", "content": text}])
