"""The shipped accelerate configs load with accelerate's own parser (unknown keys fail there)."""

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("accelerate_*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_accelerate_config_loads(path):
    config = ClusterConfig.from_yaml_file(path)
    assert config.num_processes >= 1 and not config.use_cpu


def test_fsdp_config_is_fsdp():
    config = ClusterConfig.from_yaml_file(next(p for p in CONFIGS if "fsdp" in p.name))
    assert str(config.distributed_type).endswith("FSDP") and config.fsdp_config["fsdp_version"] == 2
