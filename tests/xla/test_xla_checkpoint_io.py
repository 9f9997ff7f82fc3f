"""XLACheckpointIO (Lightning's `lightning.fabric.plugins.io.XLACheckpointIO`): without torch_xla constructing it
names the extra to install; with it, a save runs the pending graph once and writes CPU copies that load without
torch_xla. This machine has no XLA device: torch_xla is the recording fake of conftest.py, and the checkpoint's
"device" tensors are CPU tensors that report an XLA device (no tensor can live on one without torch_xla's
backend)."""
import sys

import pytest
import torch

from fabric_kit.plugins import XLACheckpointIO as FromPlugins
from fabric_kit.plugins.io import TorchCheckpointIO, XLACheckpointIO


class OnXLA(torch.Tensor):
    """A CPU tensor reporting the XLA device; `.cpu()` gives the plain tensor, as torch_xla's copy would."""

    @property
    def device(self):
        return torch.device("xla", 0)

    def cpu(self):
        return self.as_subclass(torch.Tensor).clone()


def test_without_torch_xla_it_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_xla", None)
    assert FromPlugins is XLACheckpointIO
    with pytest.raises(ModuleNotFoundError, match=r"XLACheckpointIO needs torch_xla.*fabric_kit\[xla\]"):
        XLACheckpointIO()


def test_save_runs_the_graph_once_and_writes_cpu_copies(fake_xla, tmp_path):
    io = XLACheckpointIO()
    weight = torch.arange(6.0).view(2, 3).as_subclass(OnXLA)
    checkpoint = {"model": {"weight": weight, "bias": torch.ones(2).as_subclass(OnXLA)}, "step": 3,
                  "history": [torch.zeros(1).as_subclass(OnXLA)]}
    io.save_checkpoint(checkpoint, tmp_path / "a.ckpt")
    assert fake_xla.named("sync") == [("sync", (), {})]  # one graph execution for all copies
    loaded = TorchCheckpointIO().load_checkpoint(tmp_path / "a.ckpt")  # the safe loader: plain tensors only
    assert loaded["step"] == 3 and type(loaded["model"]["weight"]) is torch.Tensor
    assert torch.equal(loaded["model"]["weight"], torch.arange(6.0).view(2, 3))
    assert type(checkpoint["model"]["weight"]) is OnXLA  # the caller's state is left as it was
    io.save_checkpoint({"cpu_only": torch.ones(1)}, tmp_path / "b.ckpt")
    assert len(fake_xla.named("sync")) == 1  # nothing on the device: no graph to run
    with pytest.raises(TypeError, match="storage_options"):
        io.save_checkpoint({}, tmp_path / "c.ckpt", storage_options={"x": 1})
