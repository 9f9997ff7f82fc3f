"""Real training on one XLA device, through torch_xla on the CPU PJRT device (`make test-xla`: torch 2.9.0 +
torch_xla 2.9.0 in .venv-xla). Skipped where torch_xla is not importable, as in the default suite.

This exercises fabric_kit's XLA path end to end — lazy tensors, graph cuts per batch, bf16 on XLA, checkpoints
copied off the device — but on XLA's CPU backend: TPU compilation, speed and numerics are not covered."""
import os

import pytest
import torch

os.environ.setdefault("PJRT_DEVICE", "CPU")
pytest.importorskip("torch_xla", reason="torch_xla is not installed: the XLA lane is `make test-xla`")

from fabric_kit.fabric import Fabric  # noqa: E402
from fabric_kit.strategies.xla import SingleXLAStrategy  # noqa: E402


def _data(n: int = 64) -> torch.utils.data.DataLoader:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=generator)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


def _train(fabric: Fabric, model, optimizer, loader, epochs: int) -> list[float]:
    losses = []
    for _ in range(epochs):
        total = torch.zeros((), device=fabric.device)
        for x, y in loader:
            loss = torch.nn.functional.mse_loss(model(x), y)
            fabric.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            total += loss.detach()
        losses.append(total.item() / len(loader))
    return losses


@pytest.mark.parametrize("precision", ["32-true", "bf16-true", "bf16-mixed"])
def test_loss_decreases_on_one_xla_device(clean_env, precision):
    fabric = Fabric(accelerator="xla", devices=1, precision=precision)
    assert isinstance(fabric._strategy, SingleXLAStrategy)
    assert fabric.device.type == "xla"
    module = _model()
    model, optimizer = fabric.setup(module, torch.optim.Adam(module.parameters(), lr=0.02))
    loader = fabric.setup_dataloaders(_data())

    losses = _train(fabric, model, optimizer, loader, epochs=6)

    assert losses[-1] < 0.5 * losses[0], losses
    assert next(model.parameters()).device.type == "xla"
    expected = torch.bfloat16 if precision == "bf16-true" else torch.float32
    assert next(model.parameters()).dtype == expected


def test_optimizer_made_before_setup_updates_the_device_parameters(clean_env):
    """Moving to XLA makes new Parameter objects; the optimizer must be relinked to them."""
    fabric = Fabric(accelerator="xla", devices=1)
    module = _model()
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    model, optimizer = fabric.setup(module, optimizer)
    assert all(p.device.type == "xla" for group in optimizer.param_groups for p in group["params"])
    assert {id(p) for p in model.parameters()} == {id(p) for g in optimizer.param_groups for p in g["params"]}


def test_bf16_mixed_computes_in_bf16_with_float32_weights(clean_env):
    fabric = Fabric(accelerator="xla", devices=1, precision="bf16-mixed")
    seen = []
    module = _model()
    module[0].register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    model = fabric.setup(module)
    out = model(fabric.to_device(torch.randn(2, 4)))
    assert seen == [torch.bfloat16]
    assert out.dtype == torch.float32 and next(model.parameters()).dtype == torch.float32


def test_save_and_load_round_trip(clean_env, tmp_path):
    fabric = Fabric(accelerator="xla", devices=1)
    module = _model()
    model, optimizer = fabric.setup(module, torch.optim.Adam(module.parameters(), lr=0.02))
    loader = fabric.setup_dataloaders(_data())
    _train(fabric, model, optimizer, loader, epochs=2)
    path = tmp_path / "xla.ckpt"
    fabric.save(str(path), {"model": model, "optimizer": optimizer, "step": 8})

    # The file holds CPU tensors only: it loads without torch_xla's device.
    raw = fabric.load(str(path))
    assert all(t.device.type == "cpu" for t in raw["model"].values())

    trained = {k: v.cpu().clone() for k, v in model.state_dict().items()}
    fresh_fabric = Fabric(accelerator="xla", devices=1)
    fresh = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    fresh_model, fresh_optimizer = fresh_fabric.setup(fresh, torch.optim.Adam(fresh.parameters(), lr=0.02))
    state = {"model": fresh_model, "optimizer": fresh_optimizer, "step": 0}
    fresh_fabric.load(str(path), state)

    assert state["step"] == 8
    for key, value in fresh_model.state_dict().items():
        assert value.device.type == "xla"
        assert torch.equal(value.cpu(), trained[key]), key
    assert fresh_optimizer.state_dict()["state"][0]["step"] == optimizer.state_dict()["state"][0]["step"]
    # Training goes on from the restored state on the device.
    assert _train(fresh_fabric, fresh_model, fresh_optimizer, fresh_fabric.setup_dataloaders(_data()), 1)



def test_each_batch_ends_with_a_graph_cut(clean_env, monkeypatch):
    """The dataloader wrapper cuts the lazy graph after every batch (`torch_xla.sync()`), so each step runs on its
    own and the same step graph is reused, instead of the epoch accumulating into one graph."""
    import torch_xla
    import torch_xla.debug.metrics as metrics

    syncs = []
    real_sync = torch_xla.sync
    monkeypatch.setattr(torch_xla, "sync", lambda *a, **k: (syncs.append(1), real_sync(*a, **k))[1])
    fabric = Fabric(accelerator="xla", devices=1)
    module = _model()
    model, optimizer = fabric.setup(module, torch.optim.SGD(module.parameters(), lr=0.01))
    loader = fabric.setup_dataloaders(_data(n=128))
    metrics.clear_all()
    for x, y in loader:
        fabric.backward(torch.nn.functional.mse_loss(model(x), y))
        optimizer.step()
        optimizer.zero_grad()
    torch_xla.sync(wait=True)
    assert len(syncs) == len(loader) + 1  # one per batch, plus the test's own
    assert metrics.metric_data("ExecuteTime")[0] >= len(loader)
    # Steps 2..8 are the same graph: compiled at most twice (step 1 sees freshly moved parameters).
    assert (metrics.counter_value("UncachedCompile") or 0) <= 2
