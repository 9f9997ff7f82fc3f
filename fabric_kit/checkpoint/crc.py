"""CRC-32s of checkpoint files: of a file on disk (`file_crc32`), of a file while it is being written
(`ChecksummedFile`), so that a save never reads its own files back, and of any byte range (`crc32_of_range`, which
both use, as does the check of a torch.save archive's records in `integrity.py`).

They read the bytes through read-only mappings of at most one `WINDOW` at a time: the checksum reads the page cache
directly, with no copy into a buffer (a copy through a buffer larger than the CPU's cache cost more than the
checksum itself), and the process's resident size grows by one window at most. The checksum is zlib-ng's CRC-32
(the standard library's zlib.crc32, several times faster), which releases the GIL while it runs.
"""
from __future__ import annotations

import io
import mmap
import os
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

from zlib_ng.zlib_ng import crc32

WINDOW = 4 * 2**20
"""Bytes mapped and checksummed at a time at most: a multiple of every system's mmap.ALLOCATIONGRANULARITY."""
_SMALL = 2**16  # the write buffer: shorter writes are gathered into one system call
_MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0)


def file_crc32(file: str | os.PathLike[str], fsync: bool = False) -> tuple[int, int]:
    """The size and CRC-32 of `file`, which is fsynced first when `fsync`."""
    with open(file, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        crc = crc32_of_range(f.fileno(), 0, size)
        if fsync:
            os.fsync(f.fileno())
    return size, crc


def crc32_of_range(fd: int, start: int, end: int, crc: int = 0) -> int:
    """`crc` continued over the bytes `start` to `end` of the open file `fd`: the one loop over file bytes that
    every checksum here runs (whole files, files being written, the records of a torch.save archive). Each mapping
    starts at the page that holds its first byte and spans at most `WINDOW`, so a small record maps a page or two.
    Raise ValueError if the file ends before `end`."""
    position = start
    while position < end:
        base = position - position % mmap.ALLOCATIONGRANULARITY
        length = min(base + WINDOW, end) - base
        with _mapped(fd, length, base) as window, memoryview(window)[position - base:] as view:
            crc = crc32(view, crc)
        position = base + length
    return crc


def _mapped(fd: int, length: int, offset: int) -> mmap.mmap:
    """A read-only mapping of `length` bytes at `offset`, its pages faulted in at once where the system can
    (Linux's MAP_POPULATE: one call instead of a fault per page)."""
    if _MAP_POPULATE:
        return mmap.mmap(fd, length, flags=mmap.MAP_SHARED | _MAP_POPULATE, prot=mmap.PROT_READ, offset=offset)
    return mmap.mmap(fd, length, access=mmap.ACCESS_READ, offset=offset)


class ChecksummedFile(io.BufferedWriter):
    """A buffered file opened for writing, front to back, whose `size` and `crc` (CRC-32) are known once it is
    closed, without reading it back: a thread checksums each `WINDOW` of the file as soon as it is written, from
    the page cache, so the checksum runs beside the writing and beside the fsync that ends it, and closing waits
    only for the last window. Writes are buffered as by `open(path, "wb")` (64 KiB), in C: a torch.save archive
    is thousands of small writes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._tracked = _TrackedFile(path)
        super().__init__(self._tracked, buffer_size=_SMALL)
        self.path = Path(path)
        self.size = 0
        self.crc = 0

    def close(self) -> None:
        """Write what is left, wait for the checksum and close the file; raise what the checksum raised."""
        if self.closed:
            return
        try:
            self.flush()
        finally:
            self._tracked.finish()
            super().close()
        self.size, self.crc = self._tracked.checksummed()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if error is None:
            self.close()
            return
        try:
            self.close()
        except Exception:  # noqa: S110 - the error that ended the block is the one to report
            pass


class _TrackedFile(io.FileIO):
    """The raw file under `ChecksummedFile`: counts the bytes handed to the system and runs the checksum thread,
    which maps and checksums each window once it is written."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        # Readable too: mapping what was written needs a descriptor open for reading.
        super().__init__(path, "w+b")
        self._written = 0  # changed by the writing thread only
        self._checksummed = 0  # changed by the checksum thread only
        self._crc = 0
        self._closing = False
        self._failure: BaseException | None = None
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._checksum, name=f"crc32 of {os.fspath(path)}", daemon=True)
        self._thread.start()

    def write(self, data: Any) -> int:
        written = super().write(data)
        if written:
            before, self._written = self._written, self._written + written
            if self._written // WINDOW != before // WINDOW:
                with self._wake:
                    self._wake.notify()
        return written or 0

    def finish(self) -> None:
        """Checksum what is left after the last write, and end the thread."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join()

    def checksummed(self) -> tuple[int, int]:
        """The size and CRC-32 of everything written, once `finish` returned."""
        if self._failure is not None:
            raise self._failure
        return self._written, self._crc

    def _checksum(self) -> None:
        fd = self.fileno()
        try:
            while True:
                with self._wake:
                    while not self._closing and self._written - self._checksummed < WINDOW:
                        self._wake.wait()
                    closing = self._closing
                end = self._written if closing else self._checksummed + WINDOW
                self._crc = crc32_of_range(fd, self._checksummed, end, self._crc)
                self._checksummed = end
                if closing:
                    return
        except BaseException as error:  # raised by `checksummed`, on the writing thread
            self._failure = error
