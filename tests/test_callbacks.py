"""Fabric's callbacks: `fabric.call` passes each hook only the keyword arguments it takes and skips (with a
warning) a non-callable attribute; `on_after_setup` and `on_after_optimizer_step` are called, as in Lightning."""
import pytest
import torch
from torch import nn

from fabric_kit import Fabric

pytestmark = pytest.mark.usefixtures("clean_env")


class Narrow:
    def __init__(self):
        self.seen = []

    def on_epoch_end(self, results):
        self.seen.append(("narrow", results))

    def on_after_setup(self, module):
        self.seen.append(("setup", type(module).__name__))

    def on_after_optimizer_step(self, optimizer):
        self.seen.append(("step", type(optimizer).__name__))


class Wide:
    def __init__(self):
        self.seen = []

    def on_epoch_end(self, **kwargs):
        self.seen.append(kwargs)


class NotCallable:
    on_epoch_end = "not a hook"


def test_call_filters_keyword_arguments_by_signature():
    narrow, wide = Narrow(), Wide()
    fabric = Fabric(accelerator="cpu", devices=1, callbacks=[narrow, wide])
    fabric.call("on_epoch_end", results=1, extra=2)
    assert narrow.seen == [("narrow", 1)] and wide.seen == [{"results": 1, "extra": 2}]


def test_call_skips_a_non_callable_attribute_with_a_warning():
    fabric = Fabric(accelerator="cpu", devices=1, callbacks=[NotCallable()])
    with pytest.warns(UserWarning, match="NotCallable.on_epoch_end: it is not callable"):
        fabric.call("on_epoch_end")


def test_setup_and_optimizer_step_call_their_hooks():
    narrow = Narrow()
    fabric = Fabric(accelerator="cpu", devices=1, callbacks=narrow)
    net = nn.Linear(2, 1)
    model, optimizer = fabric.setup(net, torch.optim.SGD(net.parameters(), lr=0.1))
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    assert narrow.seen == [("setup", "FabricModule"), ("step", "SGD")]
