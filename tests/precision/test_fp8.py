"""Float8Precision beyond the shared low-precision matrix: FSDP2's float8 all-gather on 2 CPU processes (gloo), and
`torch.compile` (backend "aot_eager") around the converted model."""
from pathlib import Path

import pytest
import torch
from torch import nn

from fabric_kit import Fabric

pytestmark = pytest.mark.usefixtures("clean_env")
pytest.importorskip("torchao")
from fabric_kit.plugins.precision import Float8Precision  # noqa: E402  # needs torchao

WORKER = Path(__file__).with_name("fp8_fsdp_worker.py")


def test_fsdp2_gathers_the_weights_in_float8_trains_alike_and_round_trips(run_ranks, tmp_path):
    _, ranks = run_ranks([WORKER, tmp_path], tmp_path, timeout=600)
    for result in ranks:
        gathered, plain = result["all_gather"], result["plain"]
        # Every Linear weight went through the float8 all-gather, on every step; without the option, none did.
        assert gathered["gathered_dtypes"] and set(gathered["gathered_dtypes"]) == {torch.float8_e4m3fn}
        assert plain["gathered_dtypes"] == []
        # The optimizer built before setup updates the float8-gathered weights: the loss falls as without it.
        assert gathered["losses"][-1] < 0.6 * gathered["losses"][0], gathered["losses"]
        assert gathered["losses"] == pytest.approx(plain["losses"], abs=1e-5)
        assert not torch.allclose(gathered["before_load"], gathered["trained"])
        torch.testing.assert_close(gathered["after_load"], gathered["trained"], rtol=0, atol=0)
    assert ranks[0]["all_gather"]["losses"] != ranks[1]["all_gather"]["losses"]  # each rank saw its own batch


def train(compiled):
    torch.manual_seed(0)
    fabric = Fabric(accelerator="cpu", devices=1, plugins=Float8Precision())
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model, optimizer = fabric.setup(torch.compile(model, backend="aot_eager") if compiled else model, optimizer)
    x = torch.randn(16, 32, generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(5):
        loss = nn.functional.mse_loss(model(x), x)
        optimizer.zero_grad()
        fabric.backward(loss)
        optimizer.step()
        losses.append(loss.item())
    return model, losses


def test_a_compiled_float8_model_trains_like_the_eager_one():
    from torchao.float8.float8_linear import Float8Linear

    compiled, compiled_losses = train(compiled=True)
    assert type(compiled._forward_module).__name__ == "OptimizedModule"
    assert sum(isinstance(m, Float8Linear) for m in compiled.modules()) == 2  # converted before compiling
    _, eager_losses = train(compiled=False)
    assert compiled_losses[-1] < 0.6 * compiled_losses[0], compiled_losses
    assert compiled_losses == pytest.approx(eager_losses, abs=1e-5)
