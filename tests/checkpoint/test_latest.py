"""latest_checkpoint picks the newest intact checkpoint and skips damaged ones."""
import os

import pytest
import torch

from fabric_kit.checkpoint import atomic_directory, latest_checkpoint, save_file


def _save_at(path, mtime):
    save_file({"w": torch.ones(8)}, path)
    os.utime(path, ns=(mtime, mtime))


def test_newest_intact_file_wins(tmp_path):
    for step in (1, 2, 3):
        _save_at(tmp_path / f"step-{step}.ckpt", step * 10**9)
    assert latest_checkpoint(tmp_path) == tmp_path / "step-3.ckpt"


def test_damaged_newest_is_skipped_with_a_warning(tmp_path):
    for step in (1, 2, 3):
        _save_at(tmp_path / f"step-{step}.ckpt", step * 10**9)
    newest = tmp_path / "step-3.ckpt"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    os.utime(newest, ns=(3 * 10**9, 3 * 10**9))
    with pytest.warns(UserWarning, match="step-3.ckpt"):
        assert latest_checkpoint(tmp_path) == tmp_path / "step-2.ckpt"


def test_temporary_files_other_patterns_and_empty_directories(tmp_path):
    assert latest_checkpoint(tmp_path / "absent") is None
    assert latest_checkpoint(tmp_path) is None
    _save_at(tmp_path / "a.ckpt", 10**9)
    (tmp_path / ".b.ckpt.x1.tmp").write_bytes(b"partial")
    (tmp_path / ".hidden.ckpt").write_bytes(b"partial")
    _save_at(tmp_path / "c.pt", 2 * 10**9)
    assert latest_checkpoint(tmp_path) == tmp_path / "a.ckpt"
    assert latest_checkpoint(tmp_path, pattern="*.pt") == tmp_path / "c.pt"


def test_directory_checkpoints_are_verified_through_their_manifest(tmp_path):
    for step in (1, 2):
        with atomic_directory(tmp_path / f"step-{step}") as staging:
            (staging / "shard-0.pt").write_bytes(b"x" * 100)
        os.utime(tmp_path / f"step-{step}", ns=(step * 10**9, step * 10**9))
    (tmp_path / "step-2" / "shard-0.pt").unlink()
    with pytest.warns(UserWarning, match="shard-0.pt"):
        assert latest_checkpoint(tmp_path, pattern="step-*") == tmp_path / "step-1"
