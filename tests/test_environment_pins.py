"""pyproject.toml and environment.yml must describe the same pinned environment."""

import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _pins(reqs):
    out = {}
    for line in reqs:
        if line.startswith("-"):
            continue
        r = Requirement(line)
        specs = list(r.specifier)
        if len(specs) == 1 and specs[0].operator == "==":
            out[r.name.lower()] = specs[0].version
    return out


def _pyproject_cpu_pins():
    proj = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = proj["optional-dependencies"]
    return _pins(proj["dependencies"] + extras["cpu"] + extras["dev"])


def _conda_pins():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_block = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return _pins(pip_block)


def test_environment_yml_matches_pyproject():
    assert _conda_pins() == _pyproject_cpu_pins()


def test_every_core_dependency_is_pinned_except_torch():
    proj = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    unpinned = [d for d in proj["dependencies"] if "==" not in d]
    # torch is a range in the core list on purpose: each extra (cpu/gpu) pins it.
    assert [Requirement(d).name for d in unpinned] == ["torch"]


def test_gpu_extra_respects_unsloth_and_vllm_caps():
    proj = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {Requirement(d).name: Requirement(d).specifier for d in proj["dependencies"]}
    gpu = {Requirement(d).name: Requirement(d).specifier for d in proj["optional-dependencies"]["gpu"]}
    # Unsloth 2026.10.9: trl <= 1.15.0, transformers <= 5.17.0, torch < 2.15, datasets < 5.
    pinned = lambda name: next(iter(core[name])).version  # noqa: E731

    assert Version(pinned("trl")) <= Version("1.15.0")
    assert Version(pinned("transformers")) <= Version("5.17.0")
    assert Version(pinned("datasets")) < Version("5")
    # vLLM 0.33 wants torch == 2.14.0, which must also satisfy the core range.
    assert "2.14.0" in gpu["torch"] and "2.14.0" in core["torch"]
    assert "2.13.0" in core["torch"]
