"""atomic_directory replaces a directory checkpoint only when the new one is complete; the two-rename fallback's
crash window is reported and repaired."""
import os

import pytest

from fabric_kit.checkpoint import CheckpointCorruptedError, atomic_directory, directory, staging_path, verify_directory


def _save(path, content):
    with atomic_directory(path) as staging:
        (staging / "shard.bin").write_text(content)


def test_replaces_and_leaves_no_staging_behind(tmp_path):
    path = tmp_path / "ckpt"
    _save(path, "old")
    _save(path, "new")
    verify_directory(path)
    assert (path / "shard.bin").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_an_exception_inside_the_block_keeps_the_old_checkpoint(tmp_path):
    path = tmp_path / "ckpt"
    _save(path, "old")
    with pytest.raises(ValueError):
        with atomic_directory(path) as staging:
            (staging / "shard.bin").write_text("half")
            raise ValueError("writer failed")
    verify_directory(path)
    assert (path / "shard.bin").read_text() == "old"
    assert not staging_path(path).exists()


def test_two_rename_fallback_crash_window_is_reported_then_repaired(tmp_path, monkeypatch):
    path = tmp_path / "ckpt"
    _save(path, "old")
    monkeypatch.setattr(directory, "_exchange", lambda a, b: False)
    real_replace, calls = os.replace, []

    def crash_on_second_rename(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise SystemExit("killed between the renames")
        real_replace(src, dst)

    monkeypatch.setattr(directory.os, "replace", crash_on_second_rename)
    with pytest.raises(SystemExit):
        _save(path, "new")
    monkeypatch.setattr(directory.os, "replace", real_replace)
    with pytest.raises(CheckpointCorruptedError, match=r"\.ckpt\.old"):
        verify_directory(path)
    _save(path, "newer")  # puts the old one back first, then swaps the new one in with the fallback
    verify_directory(path)
    assert (path / "shard.bin").read_text() == "newer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
