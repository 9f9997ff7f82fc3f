"""Reading and writing checkpoint files. A write never leaves a torn file: it goes to a temporary name in the
target's own directory (so the rename cannot cross file systems), is fsynced, and is renamed over the target; a
process killed at any instant leaves either the old file or the new one. Files are framed with a checksum
(`integrity.py`) that loading verifies before unpickling."""
from __future__ import annotations

import glob
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import torch

from fabric_kit.checkpoint import integrity
from fabric_kit.checkpoint.errors import CheckpointCorruptedError, UnsafeCheckpointError
from fabric_kit.checkpoint.sharded import needs_sharded_strategy
from fabric_kit.checkpoint.state import RESERVED_KEY


def save_file(obj: Any, path: str | os.PathLike) -> None:
    """Atomically write `obj` to `path` with torch.save, checksummed while it streams (parents are created).

    Temporary files that a killed save to the same path left behind are removed first, so two processes must not
    save to one path at the same time (fabric_kit writes from rank 0 only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            integrity.write_header(f)
            writer = integrity.ChecksumWriter(f)
            torch.save(obj, writer)
            integrity.write_footer(f, writer.size, writer.crc)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def load_file(path: str | os.PathLike, map_location: Any = "cpu", weights_only: bool = True) -> Any:
    """Verify and read a checkpoint file written by `save_file`, or a plain torch.save file (which carries no
    checksum, so only structural damage is detected). Damage raises `CheckpointCorruptedError`, a refusal of the
    safe loader `UnsafeCheckpointError`; both name the file."""
    path = Path(path)
    with _open(path) as f:
        if integrity.is_framed(f):
            offset, size = integrity.verify(f, path)
            payload: BinaryIO = integrity.Window(f, offset, size)
            return _torch_load(payload, path, map_location, weights_only, verified=True)
        _check_plain(f, path)
        f.seek(0)
        return _torch_load(f, path, map_location, weights_only, verified=False)


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", weights_only: bool = True
                    ) -> dict[str, Any]:
    """The entries of a file written by `Fabric.save`, read without a Fabric (to inspect it, or to rebuild a model
    in another program); fabric_kit's own RNG and precision state is left out. Verified like `Fabric.load`, and
    as safe by default: `weights_only=False` unpickles arbitrary objects, only for files from a trusted source.
    A sharded checkpoint directory is an error naming `fabric consolidate`."""
    checkpoint = load_file(path, map_location=map_location, weights_only=weights_only)
    if not isinstance(checkpoint, dict):
        raise TypeError(f"checkpoint {str(path)!r} holds a {type(checkpoint).__name__}, not the dict of entries "
                        "that Fabric.save writes; read it with `load_file`")
    checkpoint.pop(RESERVED_KEY, None)
    return checkpoint


def verify_file(path: str | os.PathLike) -> None:
    """Raise `CheckpointCorruptedError` unless `path` is an intact checkpoint file (for a plain torch.save file:
    unless its zip directory is readable)."""
    path = Path(path)
    with _open(path) as f:
        if integrity.is_framed(f):
            integrity.verify(f, path)
        else:
            _check_plain(f, path)


def fsync_directory(directory: str | os.PathLike) -> None:
    """Make a rename inside `directory` durable; without it a crash can resurrect the old entry."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open(path: Path) -> BinaryIO:
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if path.is_dir():
        raise IsADirectoryError(needs_sharded_strategy(path))
    f = open(path, "rb")
    if os.fstat(f.fileno()).st_size == 0:
        f.close()
        raise CheckpointCorruptedError(path, "damaged: the file is empty (0 bytes)")
    return f


def _check_plain(file: BinaryIO, path: Path) -> None:
    """A file without fabric_kit's header must be a complete zip, as torch.save writes them."""
    file.seek(0)
    if file.read(len(integrity.ZIP_MAGIC)) != integrity.ZIP_MAGIC or not zipfile.is_zipfile(file):
        raise CheckpointCorruptedError(path, "damaged or not a checkpoint: neither a fabric_kit checkpoint nor a "
                                             "complete torch.save (zip) file")


def _torch_load(file: BinaryIO, path: Path, map_location: Any, weights_only: bool, verified: bool) -> Any:
    try:
        return torch.load(file, map_location=map_location, weights_only=weights_only)
    except pickle.UnpicklingError as error:
        if not weights_only:
            raise CheckpointCorruptedError(path, f"damaged: unpickling failed ({error})") from error
        maybe_damaged = "" if verified else " (or the file is damaged: a plain torch.save file has no checksum)"
        raise UnsafeCheckpointError(
            path, f"the safe loader refused it{maybe_damaged}: it holds objects beyond tensors and plain containers. "
                  "If you trust its source, load it with weights_only=False, e.g. "
                  f"`fabric.load(path, state, weights_only=False)`. torch said: {error}") from error
    except (RuntimeError, OSError, EOFError, zipfile.BadZipFile) as error:
        if verified:
            raise
        raise CheckpointCorruptedError(path, f"damaged: torch.load could not read it ({error})") from error
