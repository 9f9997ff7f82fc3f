"""`fabric_kit.plugins.collectives` (Lightning's interface): TorchCollective over torch.distributed in 2 real gloo
processes that spawn without Fabric (tests/collectives_worker.py, one launch), SingleDeviceCollective on one."""
from pathlib import Path

import pytest
import torch

from fabric_kit.plugins.collectives import Collective, SingleDeviceCollective, TorchCollective

WORKER = Path(__file__).with_name("collectives_worker.py")


@pytest.fixture(scope="module")
def ranks(run_ranks, tmp_path_factory):
    out = tmp_path_factory.mktemp("collectives")
    return run_ranks([WORKER, "{port}", out], out)[1]


@pytest.mark.parametrize("group", ["world", "own"])
def test_every_operation(ranks, group):
    zero, one = (rank[group] for rank in ranks)
    for r, seen in enumerate((zero, one)):
        assert (seen["rank"], seen["world_size"]) == (r, 2)
        assert seen["all_reduce_sum"] == [3.0] and seen["all_reduce_max"] == [2.0]
        assert seen["broadcast"] == [6.0]
        assert seen["all_gather"] == [[0.0], [10.0]]
        assert seen["all_gather_object"] == [{"rank": 0}, {"rank": 1}]
        assert seen["broadcast_object_list"] == ["from 0"]
    assert zero["reduce"] == [3.0] and zero["gather"] == [[0.0], [3.0]]
    assert (zero["scatter"], one["scatter"]) == ([7.0], [8.0])
    assert zero["all_to_all"] == [[0.0, 0.0], [1.0, 0.0]] and one["all_to_all"] == [[0.0, 1.0], [1.0, 1.0]]
    assert one["recv"] == [42.0]
    assert one["gather_object"] == [0, 2]
    assert (zero["scatter_object_list"], one["scatter_object_list"]) == (["a"], ["b"])


def test_groups_and_the_default_group_they_need(ranks):
    for r, rank in enumerate(ranks):
        assert rank["manages"] and rank["exported_left"] == []
        assert rank["second_group"] == "TorchCollective owns a group already; `teardown()` it first"
        assert rank["lonely_member"] is (r == 1)
        assert rank["initialized_before_last"]
        assert not rank["initialized_after"] and not rank["manages_after"]


def test_single_device_and_the_interface():
    collective = SingleDeviceCollective()
    assert isinstance(collective, Collective) and (collective.rank, collective.world_size) == (0, 1)
    x = torch.ones(2)
    assert collective.all_reduce(x) is x and collective.broadcast(x, 0) is x
    assert collective.all_gather([], x) == [x] and collective.scatter(x, [x * 2]).tolist() == [2.0, 2.0]
    with pytest.raises(RuntimeError, match="owns no group; create one"):
        collective.group  # noqa: B018
    collective.create_group()
    with pytest.raises(RuntimeError, match="owns a group already"):
        collective.create_group()
    collective.teardown()
    with pytest.raises(RuntimeError, match="owns no group to destroy"):
        collective.teardown()
    assert TorchCollective.is_available() and not TorchCollective.is_initialized()
