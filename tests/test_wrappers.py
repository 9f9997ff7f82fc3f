"""The objects `Fabric.setup*` returns behave like the user's own module, optimizer and dataloader."""
from unittest.mock import Mock

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler, TensorDataset

from fabric_kit import Fabric, is_wrapped
from fabric_kit.wrappers import FabricDataLoader, FabricModule, FabricOptimizer, unwrap

pytestmark = pytest.mark.usefixtures("clean_env")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(3, 2)
        self.custom_attribute = "kept"

    def forward(self, x):
        return self.layer(x)

    def custom_method(self):
        return "called"


@pytest.fixture
def fabric():
    return Fabric(accelerator="cpu", devices=1)


def test_module_looks_like_the_users_module(fabric):
    net = Net()
    model = fabric.setup(net)
    assert isinstance(model, FabricModule)
    assert model.module is net
    assert model.custom_attribute == "kept" and model.custom_method() == "called"
    assert list(model.state_dict()) == ["layer.weight", "layer.bias"]  # no wrapper prefix in checkpoints
    x = torch.randn(4, 3)
    assert torch.equal(model(x), net(x))
    state = {k: torch.zeros_like(v) for k, v in net.state_dict().items()}
    model.load_state_dict(state)
    assert torch.equal(net.layer.weight, torch.zeros(2, 3))


def test_attributes_set_on_the_wrapper_are_set_on_the_users_module(fabric):
    net = Net()
    model = fabric.setup(net)
    model.custom_attribute = "changed"
    model.new_attribute = 3
    assert net.custom_attribute == "changed" and net.new_attribute == 3
    model.eval()  # an attribute both have: set on both
    assert not model.training and not net.training


def test_module_device_is_where_its_parameters_are(fabric):
    assert fabric.setup(Net()).device == torch.device("cpu")
    assert fabric.setup(nn.ReLU()).device == torch.device("cpu")


def test_mark_forward_method_takes_a_method_or_its_name(fabric):
    model = fabric.setup(Net())
    model.mark_forward_method("custom_method")
    model.mark_forward_method(model.module.custom_method)
    assert model.custom_method() == "called"  # one process: nothing wraps the module, the method runs as is
    with pytest.raises(ValueError, match="forward already runs"):
        model.mark_forward_method("forward")
    with pytest.raises(AttributeError, match="'custom_attribute'.*not a method"):
        model.mark_forward_method("custom_attribute")
    with pytest.raises(TypeError, match="takes a method or its name; got int"):
        model.mark_forward_method(3)


def test_module_converts_inputs_and_outputs_under_64_true(fabric):
    model = Fabric(accelerator="cpu", devices=1, precision="64-true").setup(Net())
    assert model.module.layer.weight.dtype == torch.float64
    output = model(torch.randn(4, 3))  # a float32 batch goes in ...
    assert output.dtype == torch.float32  # ... and the output comes back in float32 for the loss code


def test_optimizer_looks_like_the_users_optimizer(fabric):
    net = Net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    _, wrapped = fabric.setup(net, optimizer)
    assert isinstance(wrapped, FabricOptimizer) and isinstance(wrapped, torch.optim.SGD)
    assert wrapped.optimizer is optimizer
    wrapped.param_groups[0]["lr"] = 0.5
    assert optimizer.param_groups[0]["lr"] == 0.5
    net(torch.randn(2, 3)).sum().backward()
    wrapped.step()
    assert wrapped.state_dict() == optimizer.state_dict()
    assert len(optimizer.state) == 2  # the momentum buffers of weight and bias
    wrapped.zero_grad()
    assert net.layer.weight.grad is None


def test_optimizer_step_with_closure(fabric):
    net = Net()
    model, optimizer = fabric.setup(net, torch.optim.LBFGS(net.parameters(), lr=0.1, max_iter=3))
    before = net.layer.weight.clone()
    x = torch.randn(8, 3)

    def closure():
        optimizer.zero_grad()
        loss = model(x).pow(2).sum()
        fabric.backward(loss)
        return loss

    loss = optimizer.step(closure)
    assert torch.is_tensor(loss) and loss.item() > 0
    assert not torch.equal(before, net.layer.weight)


def test_scheduler_drives_the_optimizer_also_after_loading_a_state_dict(fabric):
    net = Net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    saved = optimizer.state_dict()
    saved["param_groups"][0]["lr"] = 0.4
    _, wrapped = fabric.setup(net, optimizer)
    wrapped.load_state_dict(saved)  # replaces the optimizer's param_groups objects
    assert wrapped.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"] == 0.4
    scheduler = torch.optim.lr_scheduler.StepLR(wrapped, step_size=1, gamma=0.5)
    wrapped.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.2)


class RecordingSampler(Sampler):
    def __init__(self, n):
        self.n = n
        self.epochs = []

    def set_epoch(self, epoch):
        self.epochs.append(epoch)

    def __iter__(self):
        return iter(range(self.n))

    def __len__(self):
        return self.n


def test_dataloader_advances_the_epoch_on_every_pass(fabric):
    sampler = RecordingSampler(6)
    loader = fabric.setup_dataloaders(DataLoader(TensorDataset(torch.arange(6)), batch_size=2, sampler=sampler))
    assert isinstance(loader, FabricDataLoader) and len(loader) == 3
    assert loader.batch_size == 2  # attributes of the user's loader
    for expected in range(3):
        assert [int(i) for (batch,) in loader for i in batch] == list(range(6))
        assert sampler.epochs[-1] == expected


def test_set_epoch_ends_a_cut_short_pass_and_starts_that_epochs_shuffle(fabric):
    def make():
        torch.manual_seed(0)
        return fabric.setup_dataloaders(DataLoader(TensorDataset(torch.arange(12)), batch_size=2, shuffle=True))

    uninterrupted = make()
    epochs = [[int(i) for (batch,) in uninterrupted for i in batch] for _ in range(3)]
    assert epochs[0] != epochs[1]
    cut = make()
    next(iter(cut))  # one batch of epoch 0, then the loop stops the pass
    assert cut.state_dict()["samples"] == 2
    cut.set_epoch(1)
    state = cut.state_dict()
    assert (state["epoch"], state["samples"], state["batches"]) == (1, 0, 0)
    assert [int(i) for (batch,) in cut for i in batch] == epochs[1]
    late = make()  # a loader created in the middle of the run
    late.set_epoch(2)
    assert [int(i) for (batch,) in late for i in batch] == epochs[2]
    with pytest.raises(ValueError, match=r"set_epoch\(-1\): the epoch must be an int >= 0"):
        late.set_epoch(-1)


def test_dataloader_moves_batches_to_its_device():
    # No second real device here: the meta device stands in for a GPU and exercises the same transfer path.
    loader = FabricDataLoader(DataLoader(TensorDataset(torch.arange(4.0)), batch_size=2), torch.device("meta"))
    batches = list(loader)
    assert len(batches) == 2 and all(batch.device.type == "meta" for (batch,) in batches)
    assert FabricDataLoader(DataLoader([1, 2]), torch.device("cpu")).device is None  # nothing to move on the CPU


def test_is_wrapped(fabric):
    net = Net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    loader = DataLoader(TensorDataset(torch.arange(4)))
    assert not any(is_wrapped(obj) for obj in (net, optimizer, loader))
    model, wrapped_optimizer = fabric.setup(net, optimizer)
    wrapped_loader = fabric.setup_dataloaders(loader)
    assert all(is_wrapped(obj) for obj in (model, wrapped_optimizer, wrapped_loader))


def test_unwrap_returns_an_object_that_answers_every_attribute():
    mock = Mock()
    assert unwrap(mock) is mock


def test_unwrap_reaches_the_users_objects(fabric):
    net = Net()
    model, optimizer = fabric.setup(net, torch.optim.SGD(net.parameters(), lr=0.1))
    assert unwrap(model) is net and unwrap(optimizer) is optimizer.optimizer
