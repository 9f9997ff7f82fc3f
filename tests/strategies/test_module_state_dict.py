"""`Strategy.get_module_state_dict` / `load_module_state_dict` (Lightning's): the full state dict with the user's
keys on every rank, under DDP (no `module.` prefix), FSDP (gathered from the shards; loading keeps each rank's
shards) and DeepSpeed ZeRO 2 and 3 (gathered from the partitions under 3; loading reaches the fp32 master weights),
strict and non-strict; and FSDP's full file through a CheckpointIO plugin. One launch of 2 gloo processes runs it
all (tests/strategies/module_state_dict_worker.py)."""
import importlib.util
from pathlib import Path

import pytest

from fabric_kit import Fabric

WORKER = Path(__file__).with_name("module_state_dict_worker.py")
KEYS = ["layers.0.bias", "layers.0.weight", "layers.2.bias", "layers.2.weight"]


DEEPSPEED = [pytest.param(f"deepspeed_stage_{stage}", marks=pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None, reason="DeepSpeed is not installed")) for stage in (2, 3)]
STRATEGIES = ["ddp", "fsdp", *DEEPSPEED]


@pytest.fixture(scope="module")
def ranks(run_ranks, tmp_path_factory):
    out = tmp_path_factory.mktemp("module_state_dict")
    return run_ranks([WORKER, out], out, timeout=600)[1]  # DeepSpeed's first run on a machine builds an op


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_full_state_dict_with_the_users_keys_on_every_rank(ranks, strategy):
    for rank in ranks:
        seen = rank[strategy]
        assert seen["keys"] == KEYS and seen["equal"] and seen["plain"]
        assert seen["loaded"]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_strict_and_non_strict_loading(ranks, strategy):
    for rank in ranks:
        error = rank[strategy]["strict_error"]
        assert "Missing key(s)" in error and "layers.0.weight" in error
        assert rank[strategy]["non_strict"]


def test_fsdp_keeps_its_shards_and_saves_through_the_checkpoint_io(ranks):
    assert [rank["fsdp"]["sharded"] for rank in ranks] == [(4, 4), (4, 4)]  # a (8, 4) weight, halved
    assert ranks[0]["fsdp"]["checkpoint_io"] == (["save", "load"], True)
    assert ranks[1]["fsdp"]["checkpoint_io"] == (["load"], True)  # rank 0 writes the file, every rank reads it


@pytest.mark.parametrize("strategy", DEEPSPEED)
def test_deepspeed_loads_into_the_master_weights_and_gathers_partitions(ranks, strategy):
    for rank in ranks:
        assert rank[strategy]["kept_through_a_step"]
    # the (8, 4) weight: whole on each rank under stage 2, half of it under stage 3
    assert [rank[strategy]["partition"] for rank in ranks] == [32 if strategy.endswith("2") else 16] * 2


def test_one_process(clean_env):
    from torch import nn

    fabric = Fabric(accelerator="cpu", devices=1)
    model = fabric.setup(nn.Linear(2, 1))
    state = fabric.strategy.get_module_state_dict(model)
    assert sorted(state) == ["bias", "weight"]
    fabric.strategy.load_module_state_dict(model, {"weight": state["weight"] * 0}, strict=False)
    assert not model.weight.any()
