"""`read_checkpoint`: a file written by Fabric.save, read in a program that builds no Fabric."""
import pytest
import torch
from torch import nn

from fabric_kit import Fabric
from fabric_kit.checkpoint import CheckpointCorruptedError, UnsafeCheckpointError, read_checkpoint

pytestmark = pytest.mark.usefixtures("clean_env")


class Opaque:
    """Not a tensor or plain container: the safe loader must refuse it."""


def saved(tmp_path, **extra):
    fabric = Fabric(accelerator="cpu", devices=1)
    model = nn.Linear(3, 2)
    path = tmp_path / "run.ckpt"
    fabric.save(str(path), {"model": model, "step": 7, **extra})
    return model, path


def test_entries_without_fabric_kits_own_state(tmp_path):
    model, path = saved(tmp_path)
    checkpoint = read_checkpoint(path)
    assert sorted(checkpoint) == ["model", "step"] and checkpoint["step"] == 7
    assert all(torch.equal(checkpoint["model"][k], v) for k, v in model.state_dict().items())
    assert checkpoint["model"]["weight"].device.type == "cpu"


def test_damage_is_detected_before_unpickling(tmp_path):
    _, path = saved(tmp_path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointCorruptedError, match="checksum"):
        read_checkpoint(path)


def test_safe_by_default(tmp_path):
    _, path = saved(tmp_path, extra=Opaque())
    with pytest.raises(UnsafeCheckpointError, match="weights_only=False"):
        read_checkpoint(path)
    assert isinstance(read_checkpoint(path, weights_only=False)["extra"], Opaque)


def test_not_a_dict_and_directory_errors(tmp_path):
    plain = tmp_path / "tensor.pt"
    torch.save(torch.ones(2), plain)
    with pytest.raises(TypeError, match="holds a Tensor, not the dict of entries"):
        read_checkpoint(plain)
    with pytest.raises(IsADirectoryError, match="is a directory"):
        read_checkpoint(tmp_path)
