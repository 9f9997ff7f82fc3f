"""Damaged checkpoints are reported as such, naming the file, instead of surfacing unpickling or zip errors; the
safe loader's refusals say how to opt in."""
import os
from dataclasses import dataclass

import pytest
import torch

from fabric_kit import Fabric
from fabric_kit.checkpoint import (
    CheckpointCorruptedError,
    CheckpointError,
    UnsafeCheckpointError,
    atomic_directory,
    load_file,
    save_file,
    verify_directory,
    verify_file,
)


@dataclass
class Settings:
    """Not a tensor nor a plain container: the safe loader refuses it."""

    lr: float


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "model.ckpt"
    save_file({"weight": torch.arange(4096, dtype=torch.float32), "step": 3}, path)
    return path


def _assert_damaged(path, function=load_file):
    with pytest.raises(CheckpointCorruptedError, match="damaged") as info:
        function(path)
    assert str(path) in str(info.value)
    assert info.value.path == str(path)
    assert isinstance(info.value, CheckpointError)


def test_intact_file_round_trips(checkpoint):
    loaded = load_file(checkpoint)
    assert loaded["step"] == 3 and torch.equal(loaded["weight"], torch.arange(4096, dtype=torch.float32))
    verify_file(checkpoint)


@pytest.mark.parametrize("keep", [0.99, 0.5, 0.01])
def test_truncated_file(checkpoint, keep):
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: int(len(data) * keep)])
    _assert_damaged(checkpoint)
    _assert_damaged(checkpoint, verify_file)


def test_byte_flipped_in_tensor_data(checkpoint):
    data = bytearray(checkpoint.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the tensor's storage: torch.load alone would load it silently
    checkpoint.write_bytes(bytes(data))
    with pytest.raises(CheckpointCorruptedError, match="checksum") as info:
        load_file(checkpoint)
    assert str(checkpoint) in str(info.value)


def test_empty_file(checkpoint):
    checkpoint.write_bytes(b"")
    with pytest.raises(CheckpointCorruptedError, match="empty") as info:
        load_file(checkpoint)
    assert str(checkpoint) in str(info.value)


def test_garbage_file(checkpoint):
    checkpoint.write_bytes(b"not a checkpoint at all" * 10)
    _assert_damaged(checkpoint)


def test_plain_torch_file_loads_and_its_truncation_is_reported(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save({"w": torch.ones(1000)}, path)
    assert torch.equal(load_file(path)["w"], torch.ones(1000))
    path.write_bytes(path.read_bytes()[:-100])
    _assert_damaged(path)
    _assert_damaged(path, verify_file)


def test_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.ckpt"):
        load_file(tmp_path / "nothing.ckpt")


def test_safe_load_refuses_arbitrary_objects_and_says_how_to_opt_in(tmp_path):
    path = tmp_path / "objects.ckpt"
    save_file({"counts": Settings(0.1)}, path)
    with pytest.raises(UnsafeCheckpointError, match="weights_only=False") as info:
        load_file(path)
    assert str(path) in str(info.value)
    assert load_file(path, weights_only=False)["counts"] == Settings(0.1)


def test_fabric_load_is_safe_by_default_with_explicit_opt_in(tmp_path):
    fabric = Fabric(accelerator="cpu", devices=1)
    path = tmp_path / "state.ckpt"
    fabric.save(path, {"counts": Settings(0.2)})
    with pytest.raises(UnsafeCheckpointError, match="weights_only=False"):
        fabric.load(path, {"counts": None})
    state = {"counts": None}
    fabric.load(path, state, weights_only=False)
    assert state["counts"] == Settings(0.2)


@pytest.fixture
def sharded(tmp_path):
    path = tmp_path / "sharded"
    with atomic_directory(path) as staging:
        for rank in range(2):
            torch.save({"shard": torch.full((256,), float(rank))}, staging / f"shard-{rank}.pt")
        (staging / "meta").mkdir()
        (staging / "meta" / "info.txt").write_text("world_size=2")
    verify_directory(path)
    return path


def test_directory_missing_shard_names_the_shard(sharded):
    os.remove(sharded / "shard-1.pt")
    with pytest.raises(CheckpointCorruptedError, match="missing") as info:
        verify_directory(sharded)
    assert str(sharded / "shard-1.pt") in str(info.value)


def test_directory_changed_or_truncated_shard(sharded):
    shard = sharded / "meta" / "info.txt"
    shard.write_text("world_size=3")
    with pytest.raises(CheckpointCorruptedError, match="checksum") as info:
        verify_directory(sharded)
    assert str(shard) in str(info.value)
    shard.write_text("w")
    with pytest.raises(CheckpointCorruptedError, match="bytes"):
        verify_directory(sharded)


def test_directory_without_manifest(sharded):
    os.remove(sharded / "fabric_kit_manifest.json")
    with pytest.raises(CheckpointCorruptedError, match="manifest") as info:
        verify_directory(sharded)
    assert str(sharded) in str(info.value)
