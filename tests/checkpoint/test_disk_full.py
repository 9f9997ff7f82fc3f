"""A disk that fills up during a save: the error names the checkpoint and the system's reason, the previous
checkpoint stays loadable, and nothing half-written is left. Runs on a real, small tmpfs (mounting needs root;
elsewhere the test is skipped with the reason)."""
import subprocess
from pathlib import Path

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


def test_full_disk_under_fsdp_fails_on_every_rank_and_keeps_the_previous_directory(small_disk, run_ranks, tmp_path):
    """Two FSDP ranks write a sharded checkpoint through torch.distributed.checkpoint onto the full disk: every
    rank raises (none is left waiting for the other), no staging directory remains, the previous one loads. A
    failure on one rank alone (rank 0's file of plain entries) also raises on both, instead of leaving rank 1
    waiting at the end of the save."""
    script = Path(__file__).with_name("scripts") / "fsdp_disk_full.py"
    _, ranks = run_ranks([script, small_disk, tmp_path], tmp_path, timeout=300)
    for rank in ranks:
        assert rank["error_type"] == "CheckpointWriteError", rank
        assert str(small_disk / "checkpoint") in rank["error"] and "No space left on device" in rank["error"]
        assert rank["disk"] == ["checkpoint"]  # no `.checkpoint.staging` left behind
        assert rank["step"] == 1 and rank["weights_restored"]
    assert ranks[0]["one_rank_error_type"] == "OSError" and "Input/output error" in ranks[0]["one_rank_error"]
    assert ranks[1]["one_rank_error_type"] == "CheckpointWriteError"
    assert "another rank failed while writing its part" in ranks[1]["one_rank_error"]
