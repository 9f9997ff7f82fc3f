"""ddp_spawn: each spawned rank trains its own copy of a model passed to `launch` (torch's spawn pickling shares
CPU tensors between processes; without a copy every rank would step one shared set of weights)."""
import pytest
import torch
from torch import nn

from fabric_kit import Fabric

pytestmark = pytest.mark.usefixtures("clean_env")


def one_sgd_step(fabric, model):
    model, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=1.0))
    optimizer.zero_grad()
    fabric.backward(model(torch.ones(1, 2)).sum())  # the same gradient (ones) on both ranks
    optimizer.step()
    fabric.barrier()  # both ranks have stepped before rank 0 reports
    return model.module.weight.detach().clone()


def test_each_spawned_rank_steps_its_own_weights():
    model = nn.Linear(2, 1, bias=False)
    nn.init.zeros_(model.weight)
    fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp_spawn")
    weight = fabric.launch(one_sgd_step, model)
    assert weight.tolist() == [[-1.0, -1.0]]  # one step of lr 1 (a shared tensor would have taken two)
    assert model.weight.tolist() == [[0.0, 0.0]]  # the launching process's model is left alone
