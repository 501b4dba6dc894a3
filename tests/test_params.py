"""The params schema: defaults, YAML loading, overrides, and clear errors."""

from pathlib import Path

import pytest

from ruscarl_lib.params import Params, ParamsError, load_params, params_from_dict, save_params

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "params").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_params_files_validate(path):
    if path.name.startswith("sweep_"):
        pytest.skip("sweep files have their own schema")
    assert isinstance(load_params(path), Params)


def test_defaults_match_the_paper():
    p = Params()
    assert (p.scaffold.alpha, p.scaffold.t0) == (125.0, 0.2)
    assert p.scaffold.intra_group == "linear" and p.scaffold.step_decay == "sigmoid"
    assert p.scaffold.in_loss is False


def test_unknown_key_names_file_and_key(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("scaffold:\n  alfa: 100\n")
    with pytest.raises(ParamsError) as e:
        load_params(f)
    assert str(f) in str(e.value) and "scaffold.alfa" in str(e.value) and "unknown key" in str(e.value)


def test_bad_value_names_key_and_value(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("scaffold:\n  t0: 1.5\n  step_decay: cosine\n")
    with pytest.raises(ParamsError) as e:
        load_params(f)
    msg = str(e.value)
    assert "scaffold.t0" in msg and "1.5" in msg and "scaffold.step_decay" in msg and "cosine" in msg


def test_not_yaml_and_missing_file(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("scaffold: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(f)
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "missing.yaml")
    f.write_text("- a list\n")
    with pytest.raises(ParamsError, match="mapping"):
        load_params(f)


def test_dotted_overrides_and_save_roundtrip(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("scaffold:\n  alpha: 50\n")
    p = load_params(f, overrides={"scaffold.t0": 0.3, "schedule_view.group_size": 4})
    assert (p.scaffold.alpha, p.scaffold.t0, p.schedule_view.group_size) == (50, 0.3, 4)
    out = save_params(p, tmp_path / "sub" / "saved.yaml")
    assert load_params(out) == p


def test_api_key_env_must_be_a_name_not_a_secret():
    with pytest.raises(ParamsError, match="NAME of an environment variable"):
        params_from_dict({"judge": {"api_key_env": "sk-abc123-secret"}})
    assert params_from_dict({"judge": {"api_key_env": "OPENAI_API_KEY"}}).judge.api_key_env == "OPENAI_API_KEY"
    # the rejected value itself is not echoed back
    with pytest.raises(ParamsError) as e:
        params_from_dict({"judge": {"api_key_env": "sk-abc123-secret"}})
    assert "sk-abc123-secret" not in str(e.value)
