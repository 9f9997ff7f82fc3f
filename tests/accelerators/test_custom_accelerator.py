"""An accelerator written to Lightning's interface (static `parse_devices` / `get_parallel_devices` /
`auto_device_count` / `is_available` / `name`, `setup_device`, `teardown`, `register_accelerators`), backed by the
CPU, passed as `Fabric(accelerator=...)` or registered by name."""
import pytest
import torch
from torch import nn

from fabric_kit import Fabric
from fabric_kit.accelerators import ACCELERATOR_REGISTRY, Accelerator
from fabric_kit.strategies import DDPStrategy, SingleDeviceStrategy

pytestmark = pytest.mark.usefixtures("clean_env")


class CPUBackedAccelerator(Accelerator):
    """As Lightning's documentation writes one: `parse_devices` gives a count, `get_parallel_devices` the devices."""

    def __init__(self):
        self.calls = []

    def setup_device(self, device):
        self.calls.append(("setup_device", device))

    def teardown(self):
        self.calls.append(("teardown",))

    @staticmethod
    def parse_devices(devices):
        return int(devices)

    @staticmethod
    def get_parallel_devices(devices):
        return [torch.device("cpu")] * devices

    @staticmethod
    def auto_device_count():
        return 1

    @staticmethod
    def is_available():
        return True

    @staticmethod
    def name():
        return "cpu_backed"

    @classmethod
    def register_accelerators(cls, accelerator_registry):
        accelerator_registry.register("cpu_backed", cls, description="the CPU, through a user's accelerator")


def test_a_custom_accelerator_trains():
    accelerator = CPUBackedAccelerator()
    fabric = Fabric(accelerator=accelerator, devices="auto")
    assert fabric.accelerator is accelerator and isinstance(fabric.strategy, SingleDeviceStrategy)
    assert fabric.accelerator.name == "cpu_backed" and CPUBackedAccelerator.name() == "cpu_backed"
    fabric.launch()
    assert accelerator.calls == [("setup_device", torch.device("cpu"))]
    model, optimizer = fabric.setup(nn.Linear(2, 1), torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=0.1))
    loss = model(torch.ones(4, 2)).sum()
    fabric.backward(loss)
    optimizer.step()
    assert fabric.device == torch.device("cpu") and model.weight.grad is not None
    fabric.strategy.teardown()
    assert accelerator.calls[-1] == ("teardown",)


def test_its_devices_make_the_strategy():
    fabric = Fabric(accelerator=CPUBackedAccelerator(), devices=2)  # not launched: the resolved setup only
    assert isinstance(fabric.strategy, DDPStrategy)
    assert fabric.strategy.parallel_devices == [torch.device("cpu")] * 2
    assert fabric.strategy.process_group_backend == "gloo"
    with pytest.raises(ValueError, match="devices=0 found no cpu_backed device"):
        Fabric(accelerator=CPUBackedAccelerator(), devices=0)


def test_registered_by_name():
    CPUBackedAccelerator.register_accelerators(ACCELERATOR_REGISTRY)
    try:
        assert "cpu_backed" in ACCELERATOR_REGISTRY.available_accelerators()
        fabric = Fabric(accelerator="cpu_backed", devices=1)
        assert type(fabric.accelerator) is CPUBackedAccelerator
    finally:
        ACCELERATOR_REGISTRY.remove("cpu_backed")
