import pytest
import torch
from torch import nn

from fabric_kit import Fabric
from fabric_kit.precision import TruePrecision
from fabric_kit.strategies import SingleDeviceStrategy

pytestmark = pytest.mark.usefixtures("clean_env")


def test_one_process_on_one_device():
    strategy = SingleDeviceStrategy("cpu")
    assert strategy.root_device == torch.device("cpu") and strategy.launcher is None
    assert (strategy.global_rank, strategy.local_rank, strategy.node_rank, strategy.world_size) == (0, 0, 0, 1)
    assert strategy.is_global_zero
    tensor = torch.ones(2)
    assert strategy.all_reduce(tensor) is tensor and strategy.all_gather(tensor) is tensor
    assert strategy.broadcast("object") == "object" and strategy.all_gather_object("object") == ["object"]
    assert strategy.reduce_boolean_decision(False) is False
    loader = torch.utils.data.DataLoader(range(4))
    assert strategy.distributed_sampler_kwargs is None and strategy.process_dataloader(loader) is loader


def test_instance_passed_to_fabric_gets_accelerator_and_precision():
    strategy = SingleDeviceStrategy("cpu")
    fabric = Fabric(accelerator="cpu", strategy=strategy, precision="64-true")
    assert fabric.strategy is strategy and strategy.accelerator is fabric.accelerator
    assert isinstance(strategy.precision, TruePrecision) and strategy.precision.dtype == torch.float64
    model = fabric.setup(nn.Linear(2, 2))
    assert model.module.weight.dtype == torch.float64  # the module is converted ...
    assert type(model._forward_module) is nn.Linear  # ... and not wrapped by the strategy


def test_setup_moves_the_module_unless_told_not_to():
    fabric = Fabric(accelerator="cpu", strategy=SingleDeviceStrategy("meta"))  # a device other than the CPU's
    assert fabric.device == torch.device("meta")
    assert fabric.setup(nn.Linear(2, 2)).module.weight.device.type == "meta"
    assert fabric.setup(nn.Linear(2, 2), move_to_device=False).module.weight.device.type == "cpu"
    assert fabric.to_device(torch.ones(1)).device.type == "meta"
