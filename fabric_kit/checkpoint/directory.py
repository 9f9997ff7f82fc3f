"""Directory checkpoints (one file per shard, as sharded strategies write them), saved atomically and verified.

`atomic_directory(path)` hands out a staging directory next to `path`; on a clean exit it records a manifest of
every file's size and CRC-32, fsyncs everything and swaps the staging directory in.

The swap. On Linux the two directories are exchanged with one `renameat2(RENAME_EXCHANGE)` call, which is atomic:
a crash leaves `path` holding the old or the new checkpoint. Where that call is unavailable (other systems, some
file systems) the swap is two renames, `path` -> `.<name>.old` then staging -> `path`; a crash between them leaves no
`path` at all, only the complete old checkpoint at `.<name>.old` (and the complete new one at the staging name).
`verify_directory` then reports exactly that, and the next `atomic_directory(path)` restores the old one first.

Checksumming is split by file: `share` gives each of a job's ranks a part of the files (balanced by size), so the
ranks of a sharded save each checksum a part of the directory and one rank writes the manifest, and on load each
rank verifies its part (`verify_directory(path, rank, world_size)`, or `verifying_directory`, which checks the large
files on a thread while the load reads the small ones and plans); the caller makes the ranks agree. A writer that
checksummed its files as it wrote them (`crc.ChecksummedFile`) hands their records over instead, and those files
are not read again.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import json
import os
import shutil
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from fabric_kit.checkpoint.crc import file_crc32
from fabric_kit.checkpoint.errors import CheckpointCorruptedError
from fabric_kit.checkpoint.io import fsync_directory

MANIFEST = "fabric_kit_manifest.json"
_FORMAT = "fabric_kit-directory/1"
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100

Records = dict[str, dict[str, int]]
"""A manifest's entries: each file's path relative to the directory -> {"size": bytes, "crc32": checksum}."""


def staging_path(path: str | os.PathLike[str]) -> Path:
    """Where `atomic_directory(path)` stages: a deterministic sibling, so every rank of a job can write its shard
    into it while one rank holds the context."""
    path = Path(path)
    return path.parent / f".{path.name}.staging"


def _old_path(path: Path) -> Path:
    return path.parent / f".{path.name}.old"


@contextmanager
def atomic_directory(path: str | os.PathLike[str],
                     records: Callable[[Path], Records] | None = None) -> Iterator[Path]:
    """Yield an empty staging directory; write the checkpoint's files into it. On a clean exit its manifest is
    written and it replaces `path` (see the module docstring for the crash window); on an exception it is
    removed and `path` is untouched. Call it on one process; the others write into `staging_path(path)` and must
    be done (a barrier) before the block ends. The manifest holds `records(staging)` when given (the ranks'
    checksums of their shares, which must have fsynced their files), else every file checksummed here."""
    path = Path(path)
    _recover(path)
    staging = staging_path(path)
    shutil.rmtree(staging, ignore_errors=True)  # a save that crashed before its swap
    staging.mkdir(parents=True)
    try:
        yield staging
        write_manifest(staging, records(staging) if records else None)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _swap_in(staging, path)


def file_sizes(directory: str | os.PathLike[str]) -> dict[str, int]:
    """Every file under `directory` but the manifest: its relative path -> its size in bytes."""
    directory = Path(directory)
    return {file.relative_to(directory).as_posix(): file.stat().st_size
            for file in sorted(directory.rglob("*")) if file.is_file() and file.name != MANIFEST}


def share(sizes: dict[str, int], rank: int, world_size: int) -> list[str]:
    """The files that `rank` of `world_size` checksums: largest first, each to the rank with the fewest bytes so
    far (ties to the lowest rank). The same on every rank for the same sizes; with one shard file per rank of
    equal size, each rank gets one."""
    load = [0] * world_size
    mine = []
    for name in sorted(sizes, key=lambda name: (-sizes[name], name)):
        least = min(range(world_size), key=lambda r: (load[r], r))
        load[least] += sizes[name]
        if least == rank:
            mine.append(name)
    return mine


def checksum(directory: str | os.PathLike[str], names: list[str], fsync: bool) -> Records:
    """The manifest records of the files `names` under `directory`, each fsynced first when `fsync`."""
    directory = Path(directory)
    records = {}
    for name in names:
        size, crc = file_crc32(directory / name, fsync)
        records[name] = {"size": size, "crc32": crc}
    return records


def completed(directory: str | os.PathLike[str], known: Records) -> Records:
    """The manifest records of every file under `directory`: `known`'s for the files it holds at their recorded
    size (those a writer checksummed as it wrote them), the others fsynced and checksummed here."""
    sizes = file_sizes(directory)
    records = {name: known[name] for name, size in sizes.items() if known.get(name, {}).get("size") == size}
    return {**records, **checksum(directory, [name for name in sizes if name not in records], fsync=True)}


def write_manifest(directory: str | os.PathLike[str], records: Records | None = None) -> None:
    """Record every file's size and CRC-32 in the manifest, written last, and fsync the directories. Without
    `records`, every file under `directory` is fsynced and checksummed here."""
    directory = Path(directory)
    if records is None:
        records = checksum(directory, list(file_sizes(directory)), fsync=True)
    manifest = directory / MANIFEST
    with open(manifest, "w") as f:
        json.dump({"format": _FORMAT, "files": dict(sorted(records.items()))}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    for sub in {directory, *(p.parent for p in directory.rglob("*"))}:
        fsync_directory(sub)


def verify_directory(path: str | os.PathLike[str], rank: int = 0, world_size: int = 1) -> None:
    """Raise `CheckpointCorruptedError` naming the first missing, resized or changed file of a directory
    checkpoint (or its missing manifest). Every file's presence and size are checked; the contents only of the
    files in `rank`'s `share` of `world_size` (all of them on one process), so a job's ranks split the reading."""
    path = Path(path)
    files = _listed_files(path)
    _check_contents(path, files, share(_sizes(files), rank, world_size))


def verifying_directory(path: str | os.PathLike[str], rank: int, world_size: int,
                        read_first: Collection[str] = ()) -> Future[None]:
    """`verify_directory(path, rank, world_size)`, begun: the manifest, every file's presence and size, and the
    contents of the files `read_first` (those a reader opens before the others, which every rank checks) are
    checked before this returns; the contents of `rank`'s share of the other files on a thread, whose outcome
    the returned future holds. A load reads the small files and plans while that thread runs, and waits for it
    only before it reads the large files."""
    path = Path(path)
    files = _listed_files(path)
    _check_contents(path, files, [name for name in read_first if name in files])
    rest = share(_sizes({name: files[name] for name in files if name not in read_first}), rank, world_size)
    pool = ThreadPoolExecutor(1, thread_name_prefix="verifying a checkpoint")
    try:
        return pool.submit(_check_contents, path, files, rest)
    finally:
        pool.shutdown(wait=False)  # the thread ends once it checked its files


def _listed_files(path: Path) -> Records:
    """The manifest's records of the directory checkpoint `path`, after checking that every file is there with its
    recorded size."""
    files = _manifest_files(path)
    for name, expected in files.items():
        file = path / name
        if not file.is_file():
            raise CheckpointCorruptedError(file, "missing: the manifest lists this shard but it does not exist")
        _check_size(file, file.stat().st_size, expected)
    return files


def _sizes(files: Records) -> dict[str, int]:
    return {name: expected["size"] for name, expected in files.items()}


def _manifest_files(path: Path) -> Records:
    """The records of the manifest of the directory checkpoint `path`."""
    if not path.is_dir():
        old = _old_path(path)
        hint = (f"; a save was interrupted while swapping directories and the previous checkpoint is complete at "
                f"{str(old)!r} (the next atomic_directory({str(path)!r}) restores it)") if old.is_dir() else ""
        raise CheckpointCorruptedError(path, f"missing: no directory checkpoint at this path{hint}")
    manifest = path / MANIFEST
    try:
        record = json.loads(manifest.read_text())
        files = record["files"] if record.get("format") == _FORMAT else None
    except (OSError, ValueError, KeyError, AttributeError) as error:
        raise CheckpointCorruptedError(manifest, f"damaged: the directory checkpoint's manifest is missing or "
                                                 f"unreadable ({error})") from error
    if not isinstance(files, dict):
        raise CheckpointCorruptedError(manifest, f"damaged: not a manifest of format {_FORMAT!r}")
    return files


def _check_contents(path: Path, files: Records, names: list[str]) -> None:
    for name in names:
        file, expected = path / name, files[name]
        size, crc = file_crc32(file)
        _check_size(file, size, expected)
        if crc != expected["crc32"]:
            raise CheckpointCorruptedError(file, f"damaged: the contents do not match the manifest's checksum (crc32 "
                                                 f"{crc:08x}, recorded {expected['crc32']:08x})")


def _check_size(file: Path, size: int, expected: dict[str, int]) -> None:
    if size != expected["size"]:
        raise CheckpointCorruptedError(file, f"damaged: {size} bytes, the manifest records {expected['size']}")


def _swap_in(staging: Path, path: Path) -> None:
    if path.exists() and _exchange(staging, path):
        shutil.rmtree(staging)  # now holds the previous checkpoint
    elif path.exists():
        old = _old_path(path)
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        fsync_directory(path.parent)
        os.replace(staging, path)  # a crash before this line leaves only `old` (see the module docstring)
        fsync_directory(path.parent)
        shutil.rmtree(old)
    else:
        os.replace(staging, path)
    fsync_directory(path.parent)


def _recover(path: Path) -> None:
    """Undo the effect of a crash inside the two-rename swap: put the complete old checkpoint back."""
    old = _old_path(path)
    if old.is_dir() and not path.exists():
        os.replace(old, path)
        fsync_directory(path.parent)
    shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two directory entries (Linux renameat2); False where unsupported."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, f"cannot exchange {str(a)!r} with {str(b)!r}: {os.strerror(code)}")


@functools.cache
def _renameat2() -> Callable[..., int] | None:
    name = ctypes.util.find_library("c")
    function = getattr(ctypes.CDLL(name, use_errno=True), "renameat2", None) if name else None
    if function is not None:
        function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return function
