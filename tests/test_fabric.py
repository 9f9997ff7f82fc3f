"""The Fabric facade on one CPU process: setup, the training-step helpers, utilities and checkpoints. Multi-process
behaviour is in tests/strategies/test_ddp.py."""
import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fabric_kit import Fabric, seed_everything
from fabric_kit.checkpoint import UnsafeCheckpointError
from fabric_kit.seed import WORKERS_VARIABLE, isolate_rng, reset_seed, seed_worker
from fabric_kit.strategies import SingleDeviceStrategy
from fabric_kit.wrappers import FabricModule, FabricOptimizer

pytestmark = pytest.mark.usefixtures("clean_env")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(3, 2)

    def forward(self, x):
        return self.layer(x)


@pytest.fixture
def fabric():
    return Fabric(accelerator="cpu", devices=1)


def make(fabric, lr=0.1):
    net = Net()
    return (net, *fabric.setup(net, torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)))


def train_step(model, optimizer, fabric, x=None):
    x = torch.randn(4, 3) if x is None else x
    optimizer.zero_grad()
    fabric.backward(model(x).pow(2).sum())
    optimizer.step()


# -- properties and launch ---------------------------------------------------------------------------------------
def test_properties():
    logger = ListLogger()
    fabric = Fabric(accelerator="cpu", devices=1, loggers=[logger, ListLogger()])
    assert fabric.device == torch.device("cpu")
    assert (fabric.global_rank, fabric.local_rank, fabric.node_rank, fabric.world_size) == (0, 0, 0, 1)
    assert fabric.is_global_zero
    assert isinstance(fabric.strategy, SingleDeviceStrategy)
    assert fabric.accelerator.name == "cpu"
    assert fabric.logger is logger and len(fabric.loggers) == 2
    assert Fabric(accelerator="cpu").logger is None and Fabric(accelerator="cpu").loggers == []


def test_launch_runs_the_function_and_is_idempotent(fabric):
    assert fabric.launch(lambda f, a, b=0: (f, a + b), 1, b=2) == (fabric, 3)
    assert fabric.launch() is None
    assert fabric.launch(lambda f: "again") == "again"


def test_ddp_needs_launch_before_setup():
    fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp")  # no processes are started here
    with pytest.raises(RuntimeError, match=r"runs 2 processes: call `fabric.launch\(\)` before"):
        fabric.setup(Net())


def test_spawn_launch_needs_a_function():
    with pytest.raises(TypeError, match=r"starts fresh processes with MultiprocessingLauncher: pass the function to "
                                        r"run, `fabric.launch\(train\)`"):
        Fabric(accelerator="cpu", devices=2, strategy="ddp_spawn").launch()


# -- setup -------------------------------------------------------------------------------------------------------
def test_setup_return_forms(fabric):
    net = Net()
    model = fabric.setup(net)
    assert isinstance(model, FabricModule) and model.module is net
    net = Net()
    first, second = torch.optim.SGD(net.parameters(), lr=0.1), torch.optim.Adam(net.parameters())
    scheduler = torch.optim.lr_scheduler.StepLR(first, 1)
    model, opt1, opt2, returned_scheduler = fabric.setup(net, first, second, scheduler=scheduler)
    assert isinstance(opt1, FabricOptimizer) and opt1.optimizer is first and opt2.optimizer is second
    assert returned_scheduler is scheduler


def test_setup_module_then_optimizers(fabric):
    net = Net()
    model = fabric.setup_module(net)
    assert isinstance(model, FabricModule)
    optimizer = fabric.setup_optimizers(torch.optim.SGD(model.parameters(), lr=0.1))
    assert isinstance(optimizer, FabricOptimizer)
    train_step(model, optimizer, fabric)


@pytest.mark.parametrize(("strategy", "devices", "first"), [("auto", 1, False), ("ddp", 2, False),
                                                             ("fsdp", 2, True)])
def test_setup_module_first_says_when_optimizers_come_after_the_model(strategy, devices, first):
    # FSDP's refusal of optimizers built before sharding, which this flag announces, is exercised on 2 processes
    # by tests/loops/trainer/scripts/loops_fsdp_fit.py (the Trainer follows the flag).
    fabric = Fabric(accelerator="cpu", devices=devices, strategy=strategy)
    assert fabric.setup_module_first is first is fabric.strategy.setup_module_first


def test_strategies_say_whether_they_shard_parameters_or_own_the_optimizer():
    """What callers (loops' weight-averaging and fine-tuning callbacks) ask instead of a strategy's class name."""
    from fabric_kit.strategies.ddp import DDPStrategy
    from fabric_kit.strategies.fsdp import FSDPStrategy
    from fabric_kit.strategies.xla_fsdp import XLAFSDPStrategy

    assert (SingleDeviceStrategy.shards_parameters, SingleDeviceStrategy.owns_optimizer) == (False, False)
    assert (DDPStrategy.shards_parameters, DDPStrategy.owns_optimizer) == (False, False)
    assert FSDPStrategy.shards_parameters and XLAFSDPStrategy.shards_parameters
    assert not (FSDPStrategy.owns_optimizer or XLAFSDPStrategy.owns_optimizer)
    pytest.importorskip("deepspeed")
    from fabric_kit.strategies.deepspeed import DeepSpeedStrategy

    for stage in (1, 2, 3):  # ZeRO partitions the parameters themselves only at stage 3
        strategy = DeepSpeedStrategy(stage=stage)
        assert (strategy.shards_parameters, strategy.owns_optimizer) == (stage == 3, True)


def test_the_users_module_can_be_set_up_again_with_its_optimizer(fabric):
    net = Net()
    model = fabric.setup(net)
    model, optimizer = fabric.setup(net, torch.optim.SGD(net.parameters(), lr=0.1))  # as in Lightning
    assert model.module is net and optimizer.param_groups[0]["params"][0] is net.layer.weight


def test_num_nodes_and_precision_as_resolved():
    fabric = Fabric(accelerator="cpu", devices=1, num_nodes=2, strategy="ddp", precision="bf16")
    assert (fabric.num_nodes, fabric.world_size) == (2, 2)
    assert fabric.precision is fabric.strategy.precision and fabric.precision.precision == "bf16-mixed"


def test_setting_up_a_set_up_module_or_optimizer_again_is_an_error(fabric):
    net, model, optimizer = make(fabric)
    with pytest.raises(ValueError, match="module Net is already the one `setup` returned; pass the model itself"):
        fabric.setup(model)
    with pytest.raises(ValueError, match="module Net is already the one `setup` returned"):
        fabric.setup_module(model)
    with pytest.raises(ValueError, match="optimizer SGD was already set up; pass each optimizer"):
        fabric.setup(Net(), optimizer)
    with pytest.raises(ValueError, match="optimizer SGD was already set up"):
        fabric.setup_optimizers(optimizer)


def test_setup_dataloaders_on_one_process(fabric):
    data = torch.utils.data.TensorDataset(torch.arange(6))
    loader = fabric.setup_dataloaders(torch.utils.data.DataLoader(data, batch_size=4))
    assert [batch.tolist() for (batch,) in loader] == [[0, 1, 2, 3], [4, 5]]
    with pytest.raises(TypeError, match="setup_dataloaders takes torch DataLoaders; got list"):
        fabric.setup_dataloaders([1, 2, 3])


class _NoLength(torch.utils.data.Dataset):
    """A map-style dataset without `__len__`: a loader can be built over it only with a sampler of its own."""

    def __getitem__(self, index):
        return torch.tensor([float(index)])


def test_setup_dataloaders_on_one_process_takes_a_dataset_without_length(fabric):
    """On one process the loader is rebuilt only around its own sampler (to make it resumable mid-epoch), so a
    map-style dataset without `__len__` works, as in Lightning."""
    loader = fabric.setup_dataloaders(torch.utils.data.DataLoader(_NoLength(), batch_size=2, sampler=range(4)))
    assert [batch.flatten().tolist() for batch in loader] == [[0.0, 1.0], [2.0, 3.0]]


# -- the training step -------------------------------------------------------------------------------------------
def test_clip_gradients_needs_exactly_one_of_value_and_norm(fabric):
    _, model, optimizer = make(fabric)
    with pytest.raises(ValueError, match="exactly one of clip_val / max_norm; got clip_val=None, max_norm=None"):
        fabric.clip_gradients(model, optimizer)
    with pytest.raises(ValueError, match="exactly one of clip_val / max_norm; got clip_val=0.5, max_norm=1.0"):
        fabric.clip_gradients(model, optimizer, clip_val=0.5, max_norm=1.0)


def test_clip_gradients_by_norm(fabric):
    net, model, optimizer = make(fabric)
    fabric.backward(model(torch.randn(8, 3) * 10).pow(2).sum())
    grads = [p.grad.clone() for p in net.parameters()]
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    assert total > 1.0
    returned = fabric.clip_gradients(model, optimizer, max_norm=1.0)
    torch.testing.assert_close(returned, total)  # the norm before clipping
    clipped = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in net.parameters()]))
    torch.testing.assert_close(clipped, torch.tensor(1.0), rtol=1e-4, atol=1e-4)
    for before, p in zip(grads, net.parameters(), strict=False):  # scaled, not changed in direction
        torch.testing.assert_close(p.grad, before / total, rtol=1e-4, atol=1e-6)


def test_clip_gradients_by_value(fabric):
    net, model, optimizer = make(fabric)
    fabric.backward(model(torch.randn(8, 3) * 10).pow(2).sum())
    grads = [p.grad.clone() for p in net.parameters()]
    assert max(g.abs().max() for g in grads) > 0.1
    assert fabric.clip_gradients(model, optimizer, clip_val=0.1) is None
    for before, p in zip(grads, net.parameters(), strict=False):
        assert torch.equal(p.grad, before.clamp(-0.1, 0.1))


def test_autocast(fabric):
    a, b = torch.randn(2, 2), torch.randn(2, 2)
    with fabric.autocast():
        assert torch.mm(a, b).dtype == torch.float32
    with Fabric(accelerator="cpu", precision="bf16-mixed").autocast():
        assert torch.mm(a, b).dtype == torch.bfloat16


def test_no_backward_sync_on_one_process(fabric):
    net, model, optimizer = make(fabric)
    with fabric.no_backward_sync(model):  # nothing to skip: the gradient accumulates as usual
        fabric.backward(model(torch.ones(1, 3)).sum())
    assert torch.equal(net.layer.weight.grad, torch.ones(2, 3))
    with pytest.raises(TypeError, match="no_backward_sync needs the module returned by fabric.setup\\(\\); got Net"):
        fabric.no_backward_sync(net)


def test_to_device(fabric):
    net = Net()
    assert fabric.to_device(net) is net
    batch = {"x": torch.ones(2), "pair": (torch.zeros(1), [3, "text"])}
    moved = fabric.to_device(batch)
    assert moved["x"].device == fabric.device and moved["pair"][0].device == fabric.device
    assert isinstance(moved["pair"], tuple) and moved["pair"][1] == [3, "text"]


# -- creating modules and tensors --------------------------------------------------------------------------------
def test_init_module_in_the_precision_dtype():
    fabric = Fabric(accelerator="cpu", precision="64-true")
    with fabric.init_module():
        net = Net()
    assert net.layer.weight.dtype == torch.float64 and net.layer.weight.device == fabric.device
    assert torch.get_default_dtype() == torch.float32  # restored afterwards
    with Fabric(accelerator="cpu", precision="bf16-true").init_module():
        assert Net().layer.weight.dtype == torch.bfloat16


@pytest.mark.parametrize("empty_init", [None, False, True])
def test_init_module_empty_init_skips_initialisation(fabric, empty_init):
    """Initialisers draw from the global RNG; with empty_init=True none runs, so the RNG stays where it was."""
    torch.manual_seed(0)
    expected_next = torch.rand(1)
    torch.manual_seed(0)
    initialised = Net().layer.weight.clone()
    torch.manual_seed(0)
    with fabric.init_module(empty_init=empty_init):
        net = Net()
    if empty_init:
        assert torch.equal(torch.rand(1), expected_next)
    else:
        assert torch.equal(net.layer.weight, initialised)
    net.layer.weight.data.fill_(1.0)  # usable either way
    assert torch.equal(net(torch.zeros(1, 3)), net.layer.bias.unsqueeze(0))


def test_init_tensor():
    with Fabric(accelerator="cpu", precision="64-true").init_tensor():
        assert torch.ones(2).dtype == torch.float64
    with Fabric(accelerator="cpu").init_tensor():
        assert torch.ones(2).dtype == torch.float32
    assert torch.ones(2).dtype == torch.float32


# -- utilities ---------------------------------------------------------------------------------------------------
def test_print(fabric, capsys):
    fabric.print("hello", 3, sep="-")
    assert capsys.readouterr().out == "hello-3\n"


class ListLogger:
    def __init__(self):
        self.records = []

    def log_metrics(self, metrics, step=None):
        self.records.append((metrics, step))


def test_log_and_log_dict():
    first, second = ListLogger(), ListLogger()
    fabric = Fabric(accelerator="cpu", loggers=[first, second])
    fabric.log("loss", torch.tensor(0.5), step=3)
    fabric.log_dict({"acc": torch.tensor(1.0), "lr": 0.1, "nested": {"x": torch.tensor(2)}})
    expected = [({"loss": 0.5}, 3), ({"acc": 1.0, "lr": 0.1, "nested": {"x": 2}}, None)]
    assert first.records == second.records == expected
    assert all(type(m["loss"]) is float for m, _ in first.records[:1])  # tensors became Python numbers
    Fabric(accelerator="cpu").log("ignored", 1.0)  # no logger: nothing to do


def test_call_hooks():
    calls = []

    class Callback:
        def on_train_start(self, *args, **kwargs):
            calls.append(("first", args, kwargs))

    class Other:
        on_train_start = "not callable"

        def on_epoch_end(self):
            calls.append(("other", (), {}))

    fabric = Fabric(accelerator="cpu", callbacks=[Callback(), Other()])
    fabric.call("on_train_start", 1, key="value")
    fabric.call("on_epoch_end")
    fabric.call("hook_nobody_has")
    assert calls == [("first", (1,), {"key": "value"}), ("other", (), {})]
    single = Fabric(accelerator="cpu", callbacks=Callback())
    single.call("on_train_start")
    assert calls[-1] == ("first", (), {})


def test_seed_everything(fabric):
    assert fabric.seed_everything(7) == 7
    a = torch.rand(3)
    seed_everything(7)
    assert torch.equal(torch.rand(3), a)


def test_setup_dataloaders_without_a_loader_is_an_error(fabric):
    with pytest.raises(ValueError, match="needs at least one DataLoader"):
        fabric.setup_dataloaders()


def test_seed_everything_is_a_staticmethod_seeding_workers_by_default():
    assert Fabric.seed_everything(3) == 3
    assert os.environ["PL_GLOBAL_SEED"] == os.environ["FABRIC_KIT_GLOBAL_SEED"] == "3"
    assert os.environ["PL_SEED_WORKERS"] == "1"  # Fabric's default, as in Lightning
    a = torch.rand(3)
    seed_everything(3)
    assert torch.equal(torch.rand(3), a)


def test_seed_everything_without_a_seed_reads_the_exported_one_else_warns_and_uses_0(monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "11")  # what a Lightning-style launcher exports
    assert seed_everything() == 11
    for name in ("PL_GLOBAL_SEED", "FABRIC_KIT_GLOBAL_SEED"):
        monkeypatch.delenv(name)
    with pytest.warns(UserWarning, match="no seed given nor exported.*seed set to 0"):
        assert seed_everything() == 0
    assert os.environ["PL_GLOBAL_SEED"] == "0"
    assert seed_everything(5.0, verbose=False) == 5  # cast to int, as Lightning does
    with pytest.raises(ValueError, match="seed='x' is not an integer"):
        seed_everything("x")
    with pytest.raises(ValueError, match="out of range"):
        seed_everything(-1)


def test_reset_seed_seeds_again_with_the_exported_seed():
    seed_everything(4, workers=True, verbose=False)
    a = torch.rand(3)
    reset_seed()
    assert torch.equal(torch.rand(3), a) and os.environ["PL_SEED_WORKERS"] == "1"


def _draws():
    return torch.rand(2).tolist(), np.random.rand(2).tolist(), [random.random(), random.random()]


@pytest.mark.parametrize("raises", [False, True])
def test_isolate_rng_puts_every_generator_back_after_its_block(raises):
    seed_everything(5, verbose=False)
    expected = _draws()
    seed_everything(5, verbose=False)
    with pytest.raises(RuntimeError) if raises else contextlib.nullcontext():
        with isolate_rng():
            inside = _draws()
            if raises:
                raise RuntimeError("inside the block")
    assert inside == expected  # the block drew from the same generators ...
    assert _draws() == expected  # ... and after it they draw the same numbers again


def test_seed_everything_workers_gives_loaders_a_seeding_worker_init_fn(fabric, monkeypatch):
    monkeypatch.setenv(WORKERS_VARIABLE, "0")  # undone after the test, whatever seed_everything exports meanwhile
    data = TensorDataset(torch.arange(4.0))
    assert fabric.setup_dataloaders(DataLoader(data)).worker_init_fn is None
    fabric.seed_everything(7, workers=True)
    for loader in (fabric.setup_dataloaders(DataLoader(data)),  # rebuilt around the shard sampler
                   fabric.setup_dataloaders(DataLoader(data), use_distributed_sampler=False)):  # the user's own
        assert loader.worker_init_fn.func is seed_worker and loader.worker_init_fn.keywords == {"rank": 0}

    def own(worker_id):
        pass
    assert fabric.setup_dataloaders(DataLoader(data, worker_init_fn=own)).worker_init_fn is own


def test_seed_worker_seeds_from_the_base_seed_the_worker_and_the_rank():
    def draws(base_seed, worker_id, rank):
        torch.manual_seed(base_seed + worker_id)  # what DataLoader does in a worker before its worker_init_fn
        seed_worker(worker_id, rank)
        return torch.randint(2**31, ()).item(), np.random.randint(2**31), random.randrange(2**31)

    assert draws(5, 0, 0) == draws(5, 0, 0)
    seen = [draws(base_seed, worker_id, rank) for base_seed in (5, 6) for worker_id in (0, 1) for rank in (0, 1)]
    assert all(len({d[generator] for d in seen}) == len(seen) for generator in range(3))


def test_collectives_on_one_process(fabric):
    assert torch.equal(fabric.all_reduce(torch.tensor([1.0, 2.0]), reduce_op="sum"), torch.tensor([1.0, 2.0]))
    assert torch.equal(fabric.all_reduce(3.0), torch.tensor(3.0))
    assert torch.equal(fabric.all_gather(torch.tensor([1, 2])), torch.tensor([1, 2]))
    assert fabric.broadcast({"a": 1}) == {"a": 1}
    fabric.barrier()
    with fabric.rank_zero_first():
        pass


# -- checkpoints -------------------------------------------------------------------------------------------------
def test_save_load_round_trip(fabric, tmp_path):
    net, model, optimizer = make(fabric)
    train_step(model, optimizer, fabric)
    path = tmp_path / "checkpoint.pt"
    fabric.save(path, {"model": model, "optimizer": optimizer, "step": 5, "note": "text", "extra": [1, 2]})
    saved_weight = net.layer.weight.clone()
    saved_optimizer = {k: v["momentum_buffer"].clone() for k, v in optimizer.state_dict()["state"].items()}

    fresh_net, fresh_model, fresh_optimizer = make(Fabric(accelerator="cpu"), lr=0.5)
    state = {"model": fresh_model, "optimizer": fresh_optimizer, "step": 0, "note": None}
    remainder = fabric.load(path, state)
    assert remainder == {"extra": [1, 2]}  # what the checkpoint held beyond `state`
    assert state["step"] == 5 and state["note"] == "text"  # plain values are replaced in the dict
    assert torch.equal(fresh_net.layer.weight, saved_weight)
    assert fresh_optimizer.param_groups[0]["lr"] == 0.1
    for key, buffer in fresh_optimizer.state_dict()["state"].items():
        assert torch.equal(buffer["momentum_buffer"], saved_optimizer[key])
    # Training continues identically from the restored state.
    x = torch.randn(4, 3)
    train_step(model, optimizer, fabric, x)
    train_step(fresh_model, fresh_optimizer, fabric, x)
    assert torch.equal(net.layer.weight, fresh_net.layer.weight)

    everything = fabric.load(path)
    assert set(everything) == {"model", "optimizer", "step", "note", "extra"}
    assert torch.equal(everything["model"]["layer.weight"], saved_weight)


def test_load_strict(fabric, tmp_path):
    net, model, optimizer = make(fabric)
    path = tmp_path / "checkpoint.pt"
    fabric.save(path, {"model": model})
    with pytest.raises(KeyError, match=r"the checkpoint has no entry for \['optimizer'\]; it holds \['model'\]"):
        fabric.load(path, {"model": model, "optimizer": optimizer})
    state = {"model": model, "optimizer": optimizer}
    assert fabric.load(path, state, strict=False) == {}


def test_save_with_filter(fabric, tmp_path):
    _, model, _ = make(fabric)
    path = tmp_path / "weights_only.pt"
    fabric.save(path, {"model": model}, filter={"model": lambda name, value: name.endswith("weight")})
    assert list(fabric.load(path)["model"]) == ["layer.weight"]


def test_a_filter_on_an_entry_that_is_not_a_dict_keeps_it_whole(fabric, tmp_path):
    _, model, _ = make(fabric)
    fabric.save(tmp_path / "c.pt", {"model": model, "step": 3}, filter={"step": lambda name, value: False})
    assert fabric.load(tmp_path / "c.pt")["step"] == 3


@dataclass
class Settings:
    """Not a tensor nor a plain container: the safe loader refuses it."""

    lr: float


def test_load_with_weights_only_none_is_safe(fabric, tmp_path):
    fabric.save(tmp_path / "c.pt", {"settings": Settings(0.1)})
    with pytest.raises(UnsafeCheckpointError, match="weights_only=False"):
        fabric.load(tmp_path / "c.pt", weights_only=None)
    assert fabric.load(tmp_path / "c.pt", weights_only=False)["settings"] == Settings(0.1)


def test_load_missing_file(fabric, tmp_path):
    missing = tmp_path / "nope.ckpt"
    with pytest.raises(FileNotFoundError, match=f"checkpoint '{missing}' does not exist"):
        fabric.load(missing, {})
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        fabric.load_raw(missing, Net())


def test_load_raw(fabric, tmp_path):
    source = Net()
    torch.save(source.state_dict(), tmp_path / "model.pt")
    net, model, optimizer = make(fabric)
    fabric.load_raw(tmp_path / "model.pt", model)
    assert torch.equal(net.layer.weight, source.layer.weight)

    other = torch.optim.SGD(source.parameters(), lr=0.3, momentum=0.9)
    torch.save(other.state_dict(), tmp_path / "optimizer.pt")
    fabric.load_raw(tmp_path / "optimizer.pt", optimizer)
    assert optimizer.param_groups[0]["lr"] == 0.3

    torch.save({"layer.weight": source.layer.weight}, tmp_path / "partial.pt")
    with pytest.raises(RuntimeError, match="Missing key"):
        fabric.load_raw(tmp_path / "partial.pt", model)
    fabric.load_raw(tmp_path / "partial.pt", model, strict=False)
