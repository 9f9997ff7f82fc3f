"""Reading and writing checkpoint files: exactly what torch.save writes, so `torch.load(path)` and every tool built
on it read them, verified on load with the CRC-32s and sizes the zip archive already records (`integrity.py`).

A write never leaves a torn file: it goes to a temporary name in the target's own directory (so the rename cannot
cross file systems), is fsynced, and is renamed over the target; a process killed at any instant leaves either the
old file or the new one. A read checks the archive's structure, then the records' CRCs on another thread while
torch.load reads them (the page cache serves both), and hands the result back only once every CRC matched."""
from __future__ import annotations

import glob
import mmap
import os
import pickle
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import torch

from fabric_kit.checkpoint import integrity
from fabric_kit.checkpoint.crc import ChecksummedFile
from fabric_kit.checkpoint.errors import CheckpointCorruptedError, UnsafeCheckpointError, reported_write_errors
from fabric_kit.checkpoint.state import RESERVED_KEY


def save_file(obj: Any, path: str | os.PathLike[str]) -> None:
    """Atomically write `obj` to `path` with torch.save (parents are created). A full disk raises
    `CheckpointWriteError` naming `path`; the previous file stays as it was.

    Temporary files that a killed save to the same path left behind are removed first, so two processes must not
    save to one path at the same time (fabric_kit writes from rank 0 only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            _written(obj, f, path)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def save_new_file(obj: Any, path: str | os.PathLike[str]) -> dict[str, int]:
    """Write `obj` with torch.save to `path`, a new file inside a directory that is swapped in as a whole (so no
    temporary name is needed), fsynced; return its manifest record (size and CRC-32, computed as it is written).
    A full disk raises `CheckpointWriteError` naming `path`."""
    with ChecksummedFile(path) as f:
        _written(obj, f, path)
    return {"size": f.size, "crc32": f.crc}


def _written(obj: Any, f: BinaryIO, path: str | os.PathLike[str]) -> None:
    """torch.save `obj` into the open file `f` (for `path`), fsynced; its records always carry CRC-32s."""
    # A Python file object, not a path: torch's C++ writer loses the errno of a failed write, Python's does not.
    with reported_write_errors(path), _records_checksummed():
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def load_file(path: str | os.PathLike[str], map_location: Any = "cpu", weights_only: bool = True) -> Any:
    """Verify and read a torch.save file (one fabric_kit wrote, or any other). Damage raises
    `CheckpointCorruptedError`, a refusal of the safe loader `UnsafeCheckpointError`; both name the file.

    The archive's structure and its pickle's CRC are checked first; the tensor records' CRCs are checked on another
    thread while torch.load reads them, and the result is returned only once every one matched."""
    path = Path(path)
    with _opened(path) as (fd, same_file):
        records = _records(fd, path)
        pickles = [record for record in records if record.name.endswith("data.pkl")]
        integrity.check_crcs(fd, pickles, path)  # before anything unpickles it
        with ThreadPoolExecutor(1) as pool:
            verified = pool.submit(integrity.check_crcs, fd, [r for r in records if r not in pickles], path)
            try:
                loaded = _torch_load(same_file, path, map_location, weights_only)
            finally:
                verified.result()  # damage found here is the error to report, whatever torch.load made of it
        return loaded


def read_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu", weights_only: bool = True
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


def verify_file(path: str | os.PathLike[str]) -> None:
    """Raise `CheckpointCorruptedError` unless `path` is an intact torch.save file: its archive complete and every
    record matching its recorded CRC-32."""
    path = Path(path)
    with _opened(path) as (fd, _):
        integrity.check_crcs(fd, _records(fd, path), path)


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Make a rename inside `directory` durable; without it a crash can resurrect the old entry."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _opened(path: Path) -> Iterator[tuple[int, str]]:
    """The open file's descriptor, and a path that names the same file even if a save replaces `path` meanwhile
    (on Linux, the descriptor's `/proc/self/fd` entry), so what torch.load reads is what is verified."""
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if path.is_dir():
        from fabric_kit.checkpoint.sharded import needs_sharded_strategy  # imports torch's DCP: only when needed

        raise IsADirectoryError(needs_sharded_strategy(path))
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise CheckpointCorruptedError(path, "damaged: the file is empty (0 bytes)")
        yield f.fileno(), f"/proc/self/fd/{f.fileno()}" if sys.platform == "linux" else str(path)


def _records(fd: int, path: Path) -> list[integrity.Record]:
    """The archive's records, its structure checked through a mapping that touches only the headers' pages."""
    with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mapping:
        data = memoryview(mapping)
        try:
            return integrity.records(data, path)
        finally:
            data.release()


@contextmanager
def _records_checksummed() -> Iterator[None]:
    """torch.save records CRC-32s unless `torch.utils.serialization.config.save.compute_crc32` was turned off;
    fabric_kit's files always carry them, since loading verifies them."""
    try:
        from torch.utils.serialization import config
    except ImportError:  # torch before 2.6 always computes them
        yield
        return
    previous = config.save.compute_crc32
    config.save.compute_crc32 = True
    try:
        yield
    finally:
        config.save.compute_crc32 = previous


def _torch_load(file: str, path: Path, map_location: Any, weights_only: bool) -> Any:
    try:
        return torch.load(file, map_location=map_location, weights_only=weights_only)
    except pickle.UnpicklingError as error:
        if not weights_only:
            raise CheckpointCorruptedError(path, f"damaged: unpickling failed ({error})") from error
        raise UnsafeCheckpointError(
            path, "the safe loader refused it: it holds objects beyond tensors and plain containers. If you trust "
                  "its source, load it with weights_only=False, e.g. `fabric.load(path, state, weights_only=False)`. "
                  f"torch said: {error}") from error
