"""A disk that fills up during a save: the error names the checkpoint and the system's reason, the previous
checkpoint stays loadable, and nothing half-written is left. Runs on a real, small tmpfs (mounting needs root;
elsewhere the test is skipped with the reason)."""
import subprocess

import pytest
import torch

from fabric_kit import Fabric
from fabric_kit.checkpoint import CheckpointError
from fabric_kit.checkpoint.errors import CheckpointWriteError


@pytest.fixture
def small_disk(tmp_path):
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.strip() or 'mount failed'}); the disk-full "
                    "behaviour is tested where mounting is allowed")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


def test_full_disk_names_the_checkpoint_and_keeps_the_previous_one(small_disk):
    fabric = Fabric(accelerator="cpu", devices=1)
    path = small_disk / "state.ckpt"
    fabric.save(path, {"weights": torch.ones(1000), "step": 1})
    with pytest.raises(CheckpointWriteError, match="No space left on device") as info:
        fabric.save(path, {"weights": torch.ones(200_000), "step": 2})  # 800 kB on a 512 kB disk
    assert str(path) in str(info.value)
    assert isinstance(info.value, CheckpointError) and isinstance(info.value, OSError)
    assert "unexpected pos" not in str(info.value)
    assert [p.name for p in small_disk.iterdir()] == ["state.ckpt"]  # no temporary file left behind
    state = {"weights": None, "step": None}
    fabric.load(path, state)
    assert state["step"] == 1 and torch.equal(state["weights"], torch.ones(1000))
