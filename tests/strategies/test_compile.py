"""`fabric.setup(torch.compile(model), optimizer)` under DDP and FSDP on 2 CPU processes (backend "aot_eager"):
compiled again outside the strategy's wrapper, as Lightning re-applies compile; trains to the weights of the
uncompiled run; checkpoints hold the plain keys (no `_orig_mod.`), which an uncompiled model loads strictly."""
from pathlib import Path

import pytest
import torch

from fabric_kit import Fabric
from tests.strategies.compile_worker import Net

WORKER = Path(__file__).with_name("compile_worker.py")


STRATEGIES = ["ddp", "fsdp"]


@pytest.fixture(scope="module")
def runs(run_ranks, tmp_path_factory):
    """(the folder, what each rank recorded by strategy) of one launch of the worker for all of STRATEGIES."""
    out = tmp_path_factory.mktemp("compile")
    return out, run_ranks([WORKER, out, *STRATEGIES], out, timeout=600)[1]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_compiled_model_is_compiled_outside_the_wrapper_and_trains_alike(runs, strategy):
    out, records = runs
    tmp_path = out / strategy
    for result in (record[strategy] for record in records):
        assert result["compiled"]["outer"] == "OptimizedModule" and result["compiled"]["compiled_around_wrapper"]
        assert result["plain"]["outer"] != "OptimizedModule"
        assert result["compiled"]["losses"] == pytest.approx(result["plain"]["losses"], abs=1e-5)
    fabric = Fabric(accelerator="cpu", devices=1)
    plain, compiled = (fabric.load(tmp_path / f"{kind}.ckpt")["model"] for kind in ("plain", "compiled"))
    assert sorted(compiled) == sorted(plain) == sorted(Net().state_dict())  # no "_orig_mod." prefix
    model = Net()
    model.load_state_dict(compiled, strict=True)
    for name, tensor in plain.items():
        assert torch.allclose(compiled[name], tensor, atol=1e-5), name
    torch.manual_seed(0)
    assert not torch.equal(compiled["layers.0.weight"], Net().state_dict()["layers.0.weight"])  # it trained


def test_compiled_module_on_one_process_keeps_plain_keys(clean_env):
    fabric = Fabric(accelerator="cpu", devices=1)
    model = fabric.setup(torch.compile(Net(), backend="aot_eager"))
    assert type(model._forward_module).__name__ == "OptimizedModule"
    assert sorted(model.state_dict()) == sorted(Net().state_dict())
    assert model(torch.ones(2, 8)).shape == (2, 4)


def test_inductor_compiles_the_module_fabric_set_up_and_trains_like_eager(clean_env):
    """The one test with torch.compile's default backend (inductor builds C++ for the CPU, about 30 s): the others
    use aot_eager, which sets the compiled module up the same way."""
    fabric = Fabric(accelerator="cpu", devices=1)
    losses = {}
    for kind in ("eager", "inductor"):
        torch.manual_seed(0)
        net = Net()
        model, optimizer = fabric.setup(torch.compile(net) if kind == "inductor" else net,
                                        torch.optim.SGD(net.parameters(), lr=0.1))
        x, y = torch.ones(4, 8), torch.zeros(4, 4)
        losses[kind] = []
        for _ in range(2):
            loss = torch.nn.functional.mse_loss(model(x), y)
            fabric.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            losses[kind].append(loss.item())
        if kind == "inductor":
            assert type(model._forward_module).__name__ == "OptimizedModule"
            assert sorted(model.state_dict()) == sorted(Net().state_dict())
    assert losses["inductor"] == pytest.approx(losses["eager"], abs=1e-5)
    assert losses["inductor"][1] < losses["inductor"][0]
