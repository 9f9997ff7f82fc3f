"""Multi-device XLA (`xla`, `xla_fsdp`) against a fake torch_xla (see conftest.py): no TPU here, and PJRT on the
CPU runs all devices as threads of one process, which is not what a TPU host does.

What these tests prove: which torch_xla entry points fabric_kit calls and with what (the PJRT spawn and its
nprocs, `xm.optimizer_step`, the FSDP wrapper class and its kwargs, parameter broadcast, per-rank checkpoint
files). What they do not prove: that gradients are really averaged, that shards are consistent, or that anything
compiles or runs on a TPU."""
import sys

import pytest
import torch
from torch.utils.data import DataLoader

from fabric_kit.fabric import Fabric
from fabric_kit.strategies.launchers.xla import XLALauncher
from fabric_kit.strategies.xla import XLAStrategy
from fabric_kit.strategies.xla_fsdp import XLAFSDPStrategy


def test_xla_strategy_is_chosen_for_all_devices_and_spawns_through_pjrt(fake_xla):
    fabric = Fabric(accelerator="tpu", devices=4)
    assert isinstance(fabric._strategy, XLAStrategy)
    assert isinstance(fabric._strategy.launcher, XLALauncher)
    assert fabric.world_size == 4  # before launch: what will be spawned

    seen = fabric.launch(lambda f: (f.global_rank, f.world_size, f.device))

    # PJRT accepts nprocs None ("every device of the host") or 1; 4 of 4 devices must be None.
    assert fake_xla.named("spawn") == [("spawn", (), {"nprocs": None, "start_method": "spawn"})]
    assert seen == (0, 4, torch.device("xla", 0))  # the result of the (fake) rank 0 comes back to the caller


def test_strategy_xla_implies_the_xla_accelerator_and_one_device_runs_in_process(fake_xla):
    fabric = Fabric(strategy="xla", devices=1)
    assert fabric.accelerator.name == "xla"
    assert fabric._strategy.launcher.nprocs == 1


def test_devices_must_be_one_or_all_of_the_host(fake_xla):
    with pytest.raises(ValueError, match="one of them or on all"):
        Fabric(accelerator="xla", devices=2)
    assert type(Fabric(accelerator="xla", devices=[3])._strategy).__name__ == "SingleXLAStrategy"


def test_device_is_refused_before_launch(fake_xla):
    fabric = Fabric(accelerator="xla", strategy="xla", devices=4)
    with pytest.raises(RuntimeError, match="fabric.launch"):
        fabric.device


def _launched_strategy(fake_xla, name: str = "xla") -> XLAStrategy:
    fabric = Fabric(accelerator="xla", strategy=name, devices=fake_xla.devices)
    fabric.launch(lambda f: None)
    return fabric._strategy


def test_optimizer_step_goes_through_xm_optimizer_step_after_the_closure(fake_xla):
    strategy = _launched_strategy(fake_xla)
    param = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([param], lr=0.5)
    order = []

    def closure():
        order.append("closure")
        param.grad = torch.ones(2)

    strategy.optimizer_step(optimizer, closure=closure)

    assert order == ["closure"]  # run before the gradient reduction, and once only
    [(_, (stepped, optimizer_args), _)] = fake_xla.named("optimizer_step")
    assert stepped is optimizer and optimizer_args == {}
    assert torch.equal(param.detach(), torch.full((2,), 0.5))


def test_replicas_start_from_rank_zero_parameters(fake_xla):
    strategy = _launched_strategy(fake_xla)
    module = torch.nn.Linear(2, 2)
    assert strategy.setup_module(module) is module
    assert fake_xla.named("broadcast_master_param") == [("broadcast_master_param", (module,), {})]


def test_collectives_dispatch_to_xla_ops(fake_xla, operands_on_cpu):
    strategy = _launched_strategy(fake_xla)
    operands_on_cpu()
    value = torch.tensor([1.0, 3.0])
    # The fake returns world_size * value for a sum, as if every replica held `value`.
    assert torch.equal(strategy.all_reduce(value, reduce_op="sum"), value * 4)
    assert torch.equal(strategy.all_reduce(value, reduce_op="mean"), value)
    assert strategy.all_gather(value).shape == (4, 2)
    strategy.barrier("here")
    assert ("rendezvous", ("here",), {}) in fake_xla.calls
    with pytest.raises(ValueError, match="not supported on XLA"):
        strategy.all_reduce(value, reduce_op="prod")


def test_rank_zero_alone_writes_the_checkpoint(fake_xla, operands_on_cpu, tmp_path):
    strategy = _launched_strategy(fake_xla)
    operands_on_cpu()
    fake_xla.ordinal = 1
    strategy.save_checkpoint(str(tmp_path / "rank1.ckpt"), {"step": 1})
    fake_xla.ordinal = 0
    strategy.save_checkpoint(str(tmp_path / "rank0.ckpt"), {"step": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rank0.ckpt"]
    assert fake_xla.named("sync")  # the lazy graph runs on every rank before rank 0 copies to the CPU


def test_the_loader_cuts_the_graph_once_per_batch_also_when_the_body_saved(fake_xla, operands_on_cpu, tmp_path):
    """After each batch's body the loader cuts the lazy graph, unless a checkpoint saved in the body cut it."""
    fabric = Fabric(accelerator="xla", strategy="xla", devices=fake_xla.devices)
    fabric.launch(lambda f: None)
    operands_on_cpu()
    loader = fabric.setup_dataloaders(DataLoader(range(12)), move_to_device=False)  # rank 0's 3 of 12 batches
    cuts_before_each_body = []
    for index, _ in enumerate(loader):
        cuts_before_each_body.append(len(fake_xla.named("sync")))
        if index == 1:
            fabric.save(str(tmp_path / "ckpt"), {"step": index})
    assert cuts_before_each_body == [0, 1, 2] and len(fake_xla.named("sync")) == 3


def test_fsdp_wraps_with_the_xla_fsdp_class_and_passes_kwargs(fake_xla):
    strategy = XLAFSDPStrategy(compute_dtype=torch.bfloat16)
    fabric = Fabric(accelerator="xla", strategy=strategy, devices=4)
    fabric.launch(lambda f: None)
    module = torch.nn.Linear(2, 2)

    model = fabric.setup_module(module)

    wrapper = model._forward_module
    assert type(wrapper).__name__ == "FakeShardedModule" and wrapper.module is module
    assert wrapper.kwargs == {"compute_dtype": torch.bfloat16}
    assert next(module.parameters()).device.type == "cpu"  # not moved whole: the wrapper places the shards
    assert not fake_xla.named("broadcast_master_param")


def test_fsdp_wants_the_optimizer_built_after_the_module(fake_xla):
    strategy = _launched_strategy(fake_xla, "xla_fsdp")
    module = torch.nn.Linear(2, 2)
    early = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(RuntimeError, match="setup_module"):
        strategy.setup_module_and_optimizers(module, [early])
    with pytest.raises(ValueError, match="not XLA FSDP shards"):
        strategy.setup_optimizer(early)
    wrapped = strategy.setup_module(module)
    optimizer = torch.optim.SGD(wrapped.parameters(), lr=0.1)
    assert strategy.setup_optimizer(optimizer) is optimizer


def test_fsdp_step_does_not_reduce_again_and_cuts_the_graph(fake_xla):
    strategy = _launched_strategy(fake_xla, "xla_fsdp")
    param = torch.nn.Parameter(torch.ones(1))
    param.grad = torch.ones(1)
    strategy.optimizer_step(torch.optim.SGD([param], lr=1.0))
    assert not fake_xla.named("optimizer_step")  # gradients were reduce-scattered in backward already
    assert fake_xla.calls[-1][0] == "sync"
    assert torch.equal(param.detach(), torch.zeros(1))


def test_fsdp_clips_with_the_norm_over_all_shards(fake_xla):
    strategy = _launched_strategy(fake_xla, "xla_fsdp")
    module = torch.nn.Linear(2, 2)
    wrapper = strategy.setup_module(module)
    optimizer = torch.optim.SGD(module.parameters(), lr=1)
    # The facade hands the strategy its wrapper; a caller holding the module inside gets the same.
    assert strategy.clip_gradients_norm(wrapper, optimizer, 1.0).item() == 123.0
    assert strategy.clip_gradients_norm(module, optimizer, 1.0).item() == 123.0
    with pytest.raises(TypeError, match="fabric.setup_module"):
        strategy.clip_gradients_norm(torch.nn.Linear(2, 2), optimizer, 1.0)


def test_fsdp_checkpoint_is_one_shard_file_per_rank_and_loads_back(fake_xla, operands_on_cpu, tmp_path):
    strategy = _launched_strategy(fake_xla, "xla_fsdp")
    operands_on_cpu()
    module = torch.nn.Linear(2, 2)
    strategy.setup_module(module)
    fake_xla.ordinal = 1
    strategy.save_checkpoint(str(tmp_path / "ckpt"), {"model": module, "step": 7})
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["shard-00001-of-00004.ckpt"]

    with torch.no_grad():
        module.weight.zero_()
    state = {"model": module, "step": 0}
    strategy.load_checkpoint(str(tmp_path / "ckpt"), state)
    assert state["step"] == 7 and module.weight.abs().sum() > 0

    fake_xla.ordinal = 2  # a rank whose shard was never written
    with pytest.raises(FileNotFoundError, match="number of processes that wrote it"):
        strategy.load_checkpoint(str(tmp_path / "ckpt"), state)


def test_real_torch_xla_is_left_in_place_afterwards():
    """The fake is scoped to each test: in the XLA lane the real module is back for the real tests."""
    module = sys.modules.get("torch_xla")
    assert module is None or hasattr(module, "__file__")
