"""The FSDP2 helpers that run in one process: the shipped configs, the FSDP1 refusal, tied modules joined."""

from __future__ import annotations

import pytest
import torch
import yaml

from encoder_shrink.errors import InvalidArgumentError
from encoder_shrink.training.sharding import (
    accelerate_config,
    check_fsdp_version,
    join_tied_modules,
    strategy,
)


@pytest.mark.parametrize(("name", "kind"), [("ddp", "MULTI_GPU"), ("fsdp2", "FSDP")])
def test_shipped_configs_are_accelerate_configs(name, kind):
    config = yaml.safe_load(accelerate_config(name).read_text())
    assert config["distributed_type"] == kind and config["num_machines"] == 1
    if kind == "FSDP":
        assert config["fsdp_config"]["fsdp_version"] == 2


def test_an_unknown_config_names_the_shipped_ones():
    with pytest.raises(InvalidArgumentError, match="ddp, fsdp2"):
        accelerate_config("deepspeed")


def test_an_fsdp1_launch_is_refused_in_one_line(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(InvalidArgumentError, match="fsdp_version: 2") as error:
        check_fsdp_version()
    assert "\n" not in str(error.value)
    monkeypatch.setenv("FSDP_VERSION", "2")
    check_fsdp_version()


def test_tied_modules_become_one_and_compute_the_same():
    from encoder_shrink import tiny

    model = tiny.tiny_t5_encoder().eval()
    assert model.encoder.embed_tokens is not model.shared  # two modules holding one tied weight
    ids = torch.tensor([[3, 5, 7, 1]])
    before, keys = model(ids)[0], list(model.state_dict())
    join_tied_modules(model)
    assert model.encoder.embed_tokens is model.shared
    assert list(model.state_dict()) == keys and torch.equal(model(ids)[0], before)


def test_a_single_process_run_is_not_sharded():
    from encoder_shrink.training.setup import make_accelerator

    assert strategy(make_accelerator("no", None)) == "single"
