"""A checkpoint file that describes itself: a 16-byte header, torch.save's payload, and a 24-byte footer holding the
payload's size and CRC-32.

torch.save's zip records carry CRCs that torch.load never checks, so a flipped byte in tensor data loads silently.
The checksum here is computed while the payload streams to disk (no second read when saving) and verified before
unpickling. CRC-32 catches accidental damage (every burst of up to 32 bits, any other change with probability
1 - 2**-32) at several GB/s; it is no defence against deliberate tampering.

    header: MAGIC (8 bytes) | format version (u32) | reserved (u32)
    footer: payload size (u64) | crc32 (u32) | reserved (u32) | END_MAGIC (8 bytes)
"""
from __future__ import annotations

import io
import os
import struct
import zlib
from typing import BinaryIO

from fabric_kit.checkpoint.errors import CheckpointCorruptedError

MAGIC = b"\x89FKCKPT\n"
END_MAGIC = b"FKCKEND\n"
VERSION = 1
_HEADER = struct.Struct("<8sII")
_FOOTER = struct.Struct("<QII8s")
ZIP_MAGIC = b"PK\x03\x04"  # what a plain torch.save file starts with
_CHUNK = 16 * 2**20


class ChecksumWriter(io.RawIOBase):
    """Passes writes through to `file` while counting bytes and updating the CRC."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self.size = 0
        self.crc = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self.crc = zlib.crc32(data, self.crc)
        written = self._file.write(data)
        self.size += len(data)
        return written if written is not None else len(data)

    def flush(self) -> None:
        self._file.flush()


def write_header(file: BinaryIO) -> None:
    file.write(_HEADER.pack(MAGIC, VERSION, 0))


def write_footer(file: BinaryIO, size: int, crc: int) -> None:
    file.write(_FOOTER.pack(size, crc, 0, END_MAGIC))


def is_framed(file: BinaryIO) -> bool:
    """Whether the open file starts with fabric_kit's header (as opposed to a plain torch.save file)."""
    file.seek(0)
    return file.read(len(MAGIC)) == MAGIC


def verify(file: BinaryIO, path: str | os.PathLike) -> tuple[int, int]:
    """Check a framed file's header, size and CRC; return the payload's `(offset, size)`, or raise
    `CheckpointCorruptedError` naming `path`."""
    total = file.seek(0, os.SEEK_END)
    if total < _HEADER.size + _FOOTER.size:
        raise CheckpointCorruptedError(path, f"damaged: {total} bytes is shorter than any checkpoint (truncated)")
    file.seek(0)
    magic, version, _ = _HEADER.unpack(file.read(_HEADER.size))
    if magic != MAGIC:
        raise CheckpointCorruptedError(path, "damaged: the fabric_kit header is missing")
    if version != VERSION:
        raise CheckpointCorruptedError(path, f"format version {version} is not supported (this fabric_kit reads "
                                             f"version {VERSION}); upgrade fabric_kit or re-save it")
    file.seek(total - _FOOTER.size)
    size, crc, _, end_magic = _FOOTER.unpack(file.read(_FOOTER.size))
    if end_magic != END_MAGIC:
        raise CheckpointCorruptedError(path, "damaged: the footer is missing, so the file was truncated or its end "
                                             "overwritten")
    if size != total - _HEADER.size - _FOOTER.size:
        raise CheckpointCorruptedError(path, f"damaged: the footer records a {size}-byte payload but the file holds "
                                             f"{total - _HEADER.size - _FOOTER.size} bytes")
    file.seek(_HEADER.size)
    actual, left = 0, size
    while left:
        chunk = file.read(min(_CHUNK, left))
        if not chunk:
            raise CheckpointCorruptedError(path, "damaged: the file shrank while it was being read")
        actual = zlib.crc32(chunk, actual)
        left -= len(chunk)
    if actual != crc:
        raise CheckpointCorruptedError(path, f"damaged: the contents do not match the recorded checksum (crc32 "
                                             f"{actual:08x}, recorded {crc:08x}); bytes were changed on disk")
    return _HEADER.size, size


class Window(io.RawIOBase):
    """A read-only view of `size` bytes of `file` starting at `offset`, so torch.load sees only the payload."""

    def __init__(self, file: BinaryIO, offset: int, size: int) -> None:
        self._file = file
        self._offset = offset
        self._size = size
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, position: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self._size}[whence]
        self._position = max(0, base + position)
        return self._position

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        count = max(0, min(len(buffer), self._size - self._position))
        if count == 0:
            return 0
        self._file.seek(self._offset + self._position)
        read = self._file.readinto(memoryview(buffer)[:count])
        self._position += read
        return read
