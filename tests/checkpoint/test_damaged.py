"""Damaged checkpoints are reported as such, naming the file, instead of surfacing unpickling or zip errors; the
safe loader's refusals say how to opt in."""
import os
import struct
import zipfile
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


@pytest.fixture
def small_checkpoint(tmp_path):
    """Small enough to damage at every byte: two tensors, a number, a list."""
    path = tmp_path / "small.ckpt"
    save_file({"weight": torch.arange(16, dtype=torch.float32), "bias": torch.ones(2), "step": 3, "ids": [1, 2]},
              path)
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


def _regions(path):
    """Byte ranges of a torch.save archive: each record's data by name, the zip directory, the end records."""
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        directory = archive.start_dir
    data = path.read_bytes()
    records = {}
    for info in infos:
        name_length, extra_length = struct.unpack_from("<HH", data, info.header_offset + 26)
        start = info.header_offset + 30 + name_length + extra_length
        records[info.filename.split("/", 1)[1]] = range(start, start + info.compress_size)
    return records, range(directory, len(data))


def _zip64_version_fields(data):
    """The two version fields of the zip64 end record: the only bytes no check covers (no reader acts on them)."""
    start = data.rindex(b"PK\x06\x06") + 12
    return set(range(start, start + 4))


def test_a_file_is_exactly_what_torch_save_writes(tmp_path):
    state = {"weight": torch.arange(4096, dtype=torch.float32), "step": 3}
    save_file(state, tmp_path / "ours.ckpt")
    torch.save(state, tmp_path / "torch.pt")

    def records(path):
        with zipfile.ZipFile(path) as archive:
            return {info.filename.split("/", 1)[1]: archive.read(info) for info in archive.infolist()}

    ours, theirs = records(tmp_path / "ours.ckpt"), records(tmp_path / "torch.pt")
    ours.pop(".data/serialization_id"), theirs.pop(".data/serialization_id")  # random per save
    assert ours == theirs
    loaded = torch.load(tmp_path / "ours.ckpt")  # torch's defaults: weights_only=True
    assert loaded["step"] == 3 and torch.equal(loaded["weight"], state["weight"])


def test_fabric_save_is_read_by_plain_torch_load(tmp_path):
    fabric = Fabric(accelerator="cpu", devices=1)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    fabric.save(tmp_path / "state.ckpt", {"model": model, "optimizer": optimizer, "step": 7})
    loaded = torch.load(tmp_path / "state.ckpt")
    assert loaded["step"] == 7
    torch.nn.Linear(3, 2).load_state_dict(loaded["model"])
    torch.optim.Adam(model.parameters()).load_state_dict(loaded["optimizer"])


def test_every_truncation_is_detected(small_checkpoint):
    checkpoint = small_checkpoint
    data = checkpoint.read_bytes()
    for length in range(1, len(data)):
        checkpoint.write_bytes(data[:length])
        with pytest.raises(CheckpointCorruptedError, match="damaged"):
            verify_file(checkpoint)


def test_every_flipped_byte_is_detected(small_checkpoint):
    checkpoint = small_checkpoint
    data = checkpoint.read_bytes()
    unchecked = _zip64_version_fields(data)
    missed = []
    for offset in range(len(data)):
        damaged = bytearray(data)
        damaged[offset] ^= 0x10
        checkpoint.write_bytes(bytes(damaged))
        try:
            verify_file(checkpoint)
        except CheckpointCorruptedError:
            continue
        missed.append(offset)
    assert set(missed) <= unchecked, f"flips at bytes {sorted(set(missed) - unchecked)} went unnoticed"


@pytest.mark.parametrize("where", ["tensor data", "pickle", "zip directory", "end record"])
def test_flipped_byte_names_the_file(checkpoint, where):
    records, directory = _regions(checkpoint)
    data = bytearray(checkpoint.read_bytes())
    offset = {"tensor data": records["data/0"], "pickle": records["data.pkl"], "zip directory": directory,
              "end record": range(len(data) - 22, len(data))}[where]
    data[offset[len(offset) // 2]] ^= 0x01  # torch.load alone loads most of these silently
    checkpoint.write_bytes(bytes(data))
    _assert_damaged(checkpoint)
    if where in ("tensor data", "pickle"):
        with pytest.raises(CheckpointCorruptedError, match="checksum"):
            load_file(checkpoint)


def test_empty_file(checkpoint):
    checkpoint.write_bytes(b"")
    with pytest.raises(CheckpointCorruptedError, match="empty") as info:
        load_file(checkpoint)
    assert str(checkpoint) in str(info.value)


def test_garbage_file(checkpoint):
    checkpoint.write_bytes(b"not a checkpoint at all" * 10)
    _assert_damaged(checkpoint)


def test_file_written_by_torch_save_loads_and_its_truncation_is_reported(tmp_path):
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
