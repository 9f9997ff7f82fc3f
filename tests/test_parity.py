"""Fabric changes where a loop runs, not what it computes: a fixed-seed training through Fabric ends with the same
weights as the raw PyTorch loop (bit-equal on one process, within 1e-5 with DDP over the same global batches)."""
import pytest
import torch
from torch import nn

from fabric_kit import Fabric
from tests.strategies import ddp_worker as worker  # the conv net and the global batches the DDP ranks use

STEPS = 200


def raw_loop(steps=STEPS):
    torch.manual_seed(0)
    model = worker.conv_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for x, y in worker.global_batches(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.state_dict()


def fabric_loop(fabric, steps=STEPS):
    torch.manual_seed(0)
    model = worker.conv_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model, optimizer = fabric.setup(model, optimizer)
    for x, y in worker.global_batches(steps):
        x, y = fabric.to_device((x, y))
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        fabric.backward(loss)
        optimizer.step()
    return model.state_dict()


@pytest.mark.usefixtures("clean_env")
def test_single_process_is_bit_equal_to_the_raw_loop():
    expected = raw_loop()
    actual = fabric_loop(Fabric(accelerator="cpu", devices=1))
    assert list(actual) == list(expected)
    torch.manual_seed(0)
    initial = worker.conv_net().state_dict()
    for name, weight in expected.items():
        assert not torch.equal(weight, initial[name])  # the loop did train
        assert actual[name].dtype == weight.dtype
        assert torch.equal(actual[name], weight), name


def test_ddp_matches_one_process_over_the_global_batches(run_ranks, tmp_path):
    """Each of 2 ranks takes half of every global batch (mean loss per rank; DDP averages gradients), which is the
    gradient of the mean loss over the whole global batch."""
    _, ranks = run_ranks([worker.__file__, "parity", "ddp", tmp_path], tmp_path)
    expected = raw_loop()
    assert list(ranks[0]["weights"]) == list(expected)
    for name, weight in expected.items():
        assert torch.equal(ranks[0]["weights"][name], ranks[1]["weights"][name]), name
        torch.testing.assert_close(ranks[0]["weights"][name], weight, rtol=0, atol=1e-5)
