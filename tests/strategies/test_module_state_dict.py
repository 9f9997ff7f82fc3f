"""`Strategy.get_module_state_dict` / `load_module_state_dict` (Lightning's): the full state dict with the user's
keys on every rank, under DDP (no `module.` prefix) and FSDP (gathered from the shards; loading keeps each rank's
shards), strict and non-strict; and FSDP's full file through a CheckpointIO plugin. One launch of 2 gloo processes
runs it all (tests/strategies/module_state_dict_worker.py)."""
from pathlib import Path

import pytest

from fabric_kit import Fabric

WORKER = Path(__file__).with_name("module_state_dict_worker.py")
KEYS = ["layers.0.bias", "layers.0.weight", "layers.2.bias", "layers.2.weight"]


@pytest.fixture(scope="module")
def ranks(run_ranks, tmp_path_factory):
    out = tmp_path_factory.mktemp("module_state_dict")
    return run_ranks([WORKER, out], out)[1]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_full_state_dict_with_the_users_keys_on_every_rank(ranks, strategy):
    for rank in ranks:
        seen = rank[strategy]
        assert seen["keys"] == KEYS and seen["equal"] and seen["plain"]
        assert seen["loaded"]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_strict_and_non_strict_loading(ranks, strategy):
    for rank in ranks:
        error = rank[strategy]["strict_error"]
        assert "Missing key(s)" in error and "layers.0.weight" in error
        assert rank[strategy]["non_strict"]


def test_fsdp_keeps_its_shards_and_saves_through_the_checkpoint_io(ranks):
    assert [rank["fsdp"]["sharded"] for rank in ranks] == [(4, 4), (4, 4)]  # a (8, 4) weight, halved
    assert ranks[0]["fsdp"]["checkpoint_io"] == (["save", "load"], True)
    assert ranks[1]["fsdp"]["checkpoint_io"] == (["load"], True)  # rank 0 writes the file, every rank reads it


def test_one_process(clean_env):
    from torch import nn

    fabric = Fabric(accelerator="cpu", devices=1)
    model = fabric.setup(nn.Linear(2, 1))
    state = fabric.strategy.get_module_state_dict(model)
    assert sorted(state) == ["bias", "weight"]
    fabric.strategy.load_module_state_dict(model, {"weight": state["weight"] * 0}, strict=False)
    assert not model.weight.any()
