"""The CheckpointIO plugin: `Fabric.save` / `Fabric.load` write and read one checkpoint file through the strategy's
`checkpoint_io`, fabric_kit's atomic, checksummed file by default, a user's subclass when one is passed in
`plugins=`, and `AsyncCheckpointIO` in a background thread."""
import copy
import threading

import pytest
import torch
from torch import nn

from fabric_kit import Fabric
from fabric_kit.checkpoint import CheckpointCorruptedError
from fabric_kit.plugins.io import AsyncCheckpointIO, CheckpointIO, TorchCheckpointIO
from fabric_kit.strategies.fsdp.strategy import FSDPStrategy

pytestmark = pytest.mark.usefixtures("clean_env")


class InMemoryCheckpointIO(CheckpointIO):
    """Keeps checkpoints in a dict: nothing touches the disk unless the plugin is bypassed."""

    def __init__(self):
        self.files, self.calls = {}, []

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        self.calls.append(("save", str(path), storage_options))
        self.files[str(path)] = copy.deepcopy(checkpoint)  # a state dict shares the parameters' storage

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        self.calls.append(("load", str(path), weights_only))
        return dict(self.files[str(path)])

    def remove_checkpoint(self, path):
        self.files.pop(str(path), None)


class Failing(CheckpointIO):
    def __init__(self, gate=None):
        self.gate = gate

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        if self.gate is not None:
            self.gate.wait()
        raise OSError(f"cannot write {path}")

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        return {}

    def remove_checkpoint(self, path):
        pass


def test_the_default_is_the_atomic_checksummed_file(tmp_path):
    fabric = Fabric(accelerator="cpu", devices=1)
    assert type(fabric.strategy.checkpoint_io) is TorchCheckpointIO
    model = nn.Linear(3, 2)
    path = tmp_path / "a.ckpt"
    fabric.save(str(path), {"model": model})
    assert torch.equal(torch.load(path)["model"]["weight"], model.weight)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointCorruptedError):
        fabric.load(str(path), {"model": model})


def test_a_custom_checkpoint_io_does_the_saving_and_loading(tmp_path):
    io = InMemoryCheckpointIO()
    fabric = Fabric(accelerator="cpu", devices=1, plugins=[io])
    assert fabric.strategy.checkpoint_io is io
    model = nn.Linear(3, 2)
    path = str(tmp_path / "b.ckpt")
    fabric.save(path, {"model": model, "step": 4})
    assert not (tmp_path / "b.ckpt").exists() and list(io.files) == [path]
    saved = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.zero_()
    state = {"model": model, "step": 0}
    assert fabric.load(path, state) == {}
    assert torch.equal(model.weight, saved) and state["step"] == 4
    assert io.calls == [("save", path, None), ("load", path, True)]
    io.files["raw"] = model.state_dict()
    fabric.load_raw("raw", nn.Linear(3, 2))
    assert io.calls[-1] == ("load", "raw", True)


def test_a_url_is_refused_unless_a_checkpoint_io_of_the_users_takes_it(tmp_path, monkeypatch):
    # Lightning writes fsspec URLs through fsspec; fabric_kit's own files are local, and a URL taken as a path
    # would be written to a local folder named "memory:" instead: refused, naming the URL and what is accepted.
    monkeypatch.chdir(tmp_path)
    url = "memory://run/last.ckpt"
    for plugins in ([], [AsyncCheckpointIO()]):
        fabric = Fabric(accelerator="cpu", devices=1, plugins=plugins)
        for call, args in (("save", ({"step": 1},)), ("load", ()), ("load_raw", (nn.Linear(1, 1),))):
            with pytest.raises(ValueError, match=rf"fabric.{call}\('{url}'\): SingleDeviceStrategy .* not URLs; "
                                                 r"accepted: a local path, or Fabric\(plugins=\[...\]\)"):
                getattr(fabric, call)(url, *args)
    assert list(tmp_path.iterdir()) == []
    io = InMemoryCheckpointIO()
    fabric = Fabric(accelerator="cpu", devices=1, plugins=[io])
    fabric.save(url, {"step": 1})
    assert fabric.load(url) == {"step": 1} and [call[:2] for call in io.calls] == [("save", url), ("load", url)]


def test_torch_checkpoint_io_on_its_own(tmp_path):
    io = TorchCheckpointIO()
    path = tmp_path / "sub" / "c.pt"
    io.save_checkpoint({"x": torch.arange(3)}, path)
    assert torch.equal(io.load_checkpoint(path)["x"], torch.arange(3))
    with pytest.raises(TypeError, match="takes no storage_options"):
        io.save_checkpoint({}, path, storage_options={"compress": True})
    io.remove_checkpoint(path)
    assert not path.exists()
    io.remove_checkpoint(path)  # nothing there: nothing to do
    directory = tmp_path / "dir"
    (directory / "inner").mkdir(parents=True)
    io.remove_checkpoint(directory)
    assert not directory.exists()


def test_async_saves_a_copy_in_the_background_and_loading_waits(tmp_path):
    gate = threading.Event()

    class Slow(InMemoryCheckpointIO):
        def save_checkpoint(self, checkpoint, path, storage_options=None):
            assert threading.current_thread() is not threading.main_thread()
            gate.wait()
            super().save_checkpoint(checkpoint, path, storage_options)

    inner = Slow()
    io = AsyncCheckpointIO(inner)
    fabric = Fabric(accelerator="cpu", devices=1, plugins=io)
    model = nn.Linear(3, 2)
    saved = model.weight.detach().clone()
    fabric.save("d.ckpt", {"model": model})
    assert inner.files == {}  # still writing
    with torch.no_grad():
        model.weight.add_(1.0)  # training goes on: the checkpoint keeps the weights it was given
    gate.set()
    fabric.load("d.ckpt", {"model": model})  # waits for the save
    assert torch.equal(model.weight, saved)
    fabric.strategy.teardown()


def test_async_reports_a_failed_background_save():
    gate = threading.Event()
    io = AsyncCheckpointIO(Failing(gate))
    io.save_checkpoint({"x": torch.ones(1)}, "e.ckpt")
    gate.set()
    with pytest.raises(OSError, match="cannot write e.ckpt"):
        io.teardown()
    io = AsyncCheckpointIO(Failing())
    io.save_checkpoint({}, "f.ckpt")
    with pytest.raises(OSError, match="cannot write f.ckpt"):
        io.load_checkpoint("f.ckpt")
    with pytest.raises(TypeError, match="wraps a CheckpointIO instance; got str"):
        AsyncCheckpointIO("torch")


def test_plugins_that_cannot_be_used_are_refused():
    with pytest.raises(ValueError, match="two CheckpointIO plugins"):
        Fabric(accelerator="cpu", devices=1, plugins=[TorchCheckpointIO(), InMemoryCheckpointIO()])
    with pytest.raises(ValueError, match="FSDPStrategy stores its checkpoints as a directory .* "
                                         "state_dict_type='full'"):
        Fabric(accelerator="cpu", devices=2, strategy=FSDPStrategy(), plugins=[InMemoryCheckpointIO()])
    io = InMemoryCheckpointIO()
    fabric = Fabric(accelerator="cpu", devices=2, strategy=FSDPStrategy(state_dict_type="full"), plugins=[io])
    assert fabric.strategy.checkpoint_io is io
    with pytest.raises(TypeError, match="must be a CheckpointIO instance"):
        fabric.strategy.checkpoint_io = "torch"
