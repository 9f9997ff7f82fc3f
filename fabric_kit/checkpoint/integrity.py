"""Verifying a torch.save archive with what the zip format already records, so checkpoints stay plain torch.save
files that every PyTorch tool reads.

torch.save writes a zip archive (stored, not compressed) whose every record (the pickle, each tensor's storage,
a few small version records) carries a CRC-32 and a size in the central directory, computed by torch's C++ writer
as it writes. torch.load checks none of them, so a flipped byte in tensor data loads silently. `records` checks the
structure around them and `check_crcs` every record:

- the end-of-archive record (and its zip64 twin) is the file's last bytes: a file cut at any offset has none;
- the central directory tiles its region exactly, entry by entry, and agrees with the end records;
- every entry's local header repeats the central directory's name, flags, method, version and time, and the
  records tile the file from byte 0 to the central directory with no gap; a data descriptor after a record
  repeats its CRC and sizes;
- every record's bytes match its CRC-32; torch's alignment padding holds only its filler bytes;
- the fields that exist only once in the central directory (version made by, attributes, disk) are the same for
  every entry, so a flipped byte in one entry is caught.

What is left unchecked is the zip64 end record's two version fields, which no reader acts on. CRC-32 catches
accidental damage (every burst of up to 32 bits, any other change with probability 1 - 2**-32) at several GB/s; it
is no defence against deliberate tampering.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import NoReturn

from fabric_kit.checkpoint.crc import crc32_of_range
from fabric_kit.checkpoint.errors import CheckpointCorruptedError

ZIP_MAGIC = b"PK\x03\x04"  # what a torch.save file starts with
_LOCAL = struct.Struct("<IHHHHHIIIHH")
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")
_END = struct.Struct("<IHHHHIIH")
_ZIP64_LOCATOR = struct.Struct("<IIQI")
_ZIP64_END = struct.Struct("<IQHHIIQQQQ")
_DESCRIPTOR_SIGNATURE = 0x08074B50
_ZIP64_EXTRA = 0x0001
_PADDING_EXTRA = 0x4246  # b"FB": torch's alignment padding, filled with b"Z"
_DATA_DESCRIPTOR_FLAG = 0x0008


@dataclass(frozen=True)
class _Entry:
    name: bytes
    made_by: int
    needed: int
    flags: int
    method: int
    time: int
    date: int
    crc: int
    compressed: int
    size: int
    disk: int
    internal: int
    external: int
    offset: int


@dataclass(frozen=True)
class Record:
    """One record of the archive: where its bytes are and the CRC-32 the zip directory recorded for them."""

    name: str
    start: int
    size: int
    crc: int


def records(data: memoryview, path: str | os.PathLike[str]) -> list[Record]:
    """The archive's records, after checking everything but their CRCs (see the module docstring); raise
    `CheckpointCorruptedError` naming `path` unless `data` (the whole file) is a zip archive as torch.save writes
    them."""
    damaged = _Reporter(path)
    count, directory_size, directory_offset, directory_end = _end_records(data, damaged)
    entries = _central_directory(data, directory_offset, directory_size, directory_end, count, damaged)
    for field in ("made_by", "disk", "internal", "external"):
        values = {getattr(entry, field) for entry in entries}
        if len(values) > 1:
            damaged(f"the zip directory's entries disagree on their {field.replace('_', ' ')} field ({sorted(values)})")
    return [Record(entry.name.decode("utf-8", "replace"), start, entry.compressed, entry.crc)
            for entry, start in _records(data, entries, directory_offset, damaged)]


def check_crcs(fd: int, records: list[Record], path: str | os.PathLike[str]) -> None:
    """Compare each record of the open file `fd` with its CRC-32; raise `CheckpointCorruptedError` naming `path`
    and the record on a mismatch. The bytes are read through `crc.crc32_of_range`'s mappings of at most one window
    (the process's resident size grows by that much at most), and the checksum releases the GIL, so the check
    runs beside `torch.load` on another core."""
    for record in records:
        try:
            crc = crc32_of_range(fd, record.start, record.start + record.size)
        except ValueError as error:  # the mapping found the file shorter than the directory said
            raise CheckpointCorruptedError(path, f"damaged: the file shrank while record {record.name!r} was "
                                                 "read") from error
        if crc != record.crc:
            raise CheckpointCorruptedError(path, f"damaged: record {record.name!r} does not match its checksum "
                                                 f"(crc32 {crc:08x}, recorded {record.crc:08x}): bytes were changed "
                                                 "on disk")


class _Reporter:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = path

    def __call__(self, what: str) -> NoReturn:
        raise CheckpointCorruptedError(self.path, f"damaged: {what}")


def _end_records(data: memoryview, damaged: _Reporter) -> tuple[int, int, int, int]:
    """(entries, central directory size, its offset, where it must end), from the end record and its zip64 twin."""
    total = len(data)
    if total < _END.size:
        damaged(f"{total} bytes is shorter than any torch.save archive (truncated)")
    signature, disk, directory_disk, on_disk, count, size, offset, comment = _END.unpack_from(data, total - _END.size)
    if signature != 0x06054B50 or comment != 0:
        damaged("the archive's end record is missing: the file was truncated (or is not a torch.save archive)")
    if disk or directory_disk or on_disk != count:
        damaged("the archive's end record names other disks")
    locator = total - _END.size - _ZIP64_LOCATOR.size
    if locator < 0 or struct.unpack_from("<I", data, locator)[0] != 0x07064B50:
        return count, size, offset, total - _END.size
    _, end_disk, end_offset, disks = _ZIP64_LOCATOR.unpack_from(data, locator)
    if end_disk != 0 or disks != 1 or end_offset + _ZIP64_END.size != locator:
        damaged("the zip64 end-record locator does not point at the zip64 end record")
    (signature, record_size, _made_by, _needed, disk, directory_disk, on_disk, count64, size64,
     offset64) = _ZIP64_END.unpack_from(data, end_offset)
    if signature != 0x06064B50 or record_size != _ZIP64_END.size - 12 or disk or directory_disk:
        damaged("the zip64 end record is damaged")
    if on_disk != count64 or any(short not in (long, saturated) for short, long, saturated in
                                 ((count, count64, 0xFFFF), (size, size64, 0xFFFFFFFF),
                                  (offset, offset64, 0xFFFFFFFF))):
        damaged("the end record and the zip64 end record disagree on the zip directory")
    return count64, size64, offset64, end_offset


def _central_directory(data: memoryview, offset: int, size: int, end: int, count: int,
                       damaged: _Reporter) -> list[_Entry]:
    if offset + size != end:
        damaged("the zip directory does not end where the end record begins")
    entries, position = [], offset
    while position < end:
        if position + _CENTRAL.size > end:
            damaged(f"the zip directory's entry at byte {position} is cut short")
        (signature, made_by, needed, flags, method, time, date, crc, compressed, length, name_length, extra_length,
         comment_length, disk, internal, external, local_offset) = _CENTRAL.unpack_from(data, position)
        if signature != 0x02014B50:
            damaged(f"no zip directory entry at byte {position}")
        name_start = position + _CENTRAL.size
        extra_start = name_start + name_length
        position = extra_start + extra_length + comment_length
        if position > end:
            damaged(f"the zip directory's entry at byte {name_start - _CENTRAL.size} runs past the directory")
        extras = _extra_fields(data, extra_start, extra_length, damaged)
        length, compressed, local_offset, disk = _widened(extras.get(_ZIP64_EXTRA), damaged, length, compressed,
                                                          local_offset, disk)
        entries.append(_Entry(bytes(data[name_start:extra_start]), made_by, needed, flags, method, time, date, crc,
                              compressed, length, disk, internal, external, local_offset))
    if len(entries) != count:
        damaged(f"the zip directory holds {len(entries)} entries, the end record counts {count}")
    return entries


def _records(data: memoryview, entries: list[_Entry], directory_offset: int,
             damaged: _Reporter) -> list[tuple[_Entry, int]]:
    """Each entry with where its data starts, after checking its local header and that records tile the file."""
    records, position = [], 0
    for entry in sorted(entries, key=lambda e: e.offset):
        name = entry.name.decode("utf-8", "replace")
        if entry.offset != position or position + _LOCAL.size > directory_offset:
            damaged(f"record {name!r} is not where the previous record ends (byte {entry.offset}, expected "
                    f"{position})")
        (signature, needed, flags, method, time, date, crc, compressed, length, name_length,
         extra_length) = _LOCAL.unpack_from(data, position)
        start = position + _LOCAL.size + name_length + extra_length
        if signature != 0x04034B50 or bytes(data[position + _LOCAL.size:position + _LOCAL.size + name_length]) \
                != entry.name:
            damaged(f"record {name!r}: its local header is missing or names another record")
        if (needed, flags, method, time, date) != (entry.needed, entry.flags, entry.method, entry.time, entry.date):
            damaged(f"record {name!r}: its local header disagrees with the zip directory")
        if entry.method != 0:
            damaged(f"record {name!r} is compressed (method {entry.method}); torch.save stores records as they are")
        extras = _extra_fields(data, position + _LOCAL.size + name_length, extra_length, damaged)
        padding = extras.get(_PADDING_EXTRA)
        if padding is not None and padding.strip(b"Z"):
            damaged(f"record {name!r}: its alignment padding was changed")
        end = start + entry.compressed
        if flags & _DATA_DESCRIPTOR_FLAG:  # the writer streamed it: the header's fields are zero, a descriptor follows
            end = _descriptor_end(data, end, entry, _ZIP64_EXTRA in extras, name, damaged)
        if (crc, compressed, length) not in ((entry.crc, entry.compressed, entry.size), (0, 0, 0)) and \
                _ZIP64_EXTRA not in extras:
            damaged(f"record {name!r}: its local header's checksum or size disagrees with the zip directory")
        records.append((entry, start))
        position = end
    if position != directory_offset:
        damaged(f"the records end at byte {position} but the zip directory starts at byte {directory_offset}")
    return records


def _descriptor_end(data: memoryview, position: int, entry: _Entry, zip64: bool, name: str,
                    damaged: _Reporter) -> int:
    if position + 4 <= len(data) and struct.unpack_from("<I", data, position)[0] == _DESCRIPTOR_SIGNATURE:
        position += 4
    layout = struct.Struct("<IQQ" if zip64 else "<III")
    if position + layout.size > len(data):
        damaged(f"record {name!r} is cut short")
    if layout.unpack_from(data, position) != (entry.crc, entry.compressed, entry.size):
        damaged(f"record {name!r}: its data descriptor disagrees with the zip directory")
    return position + layout.size


def _extra_fields(data: memoryview, start: int, length: int, damaged: _Reporter) -> dict[int, bytes]:
    fields, position, end = {}, start, start + length
    while position < end:
        if position + 4 > end:
            damaged(f"an extra field at byte {position} is cut short")
        key, size = struct.unpack_from("<HH", data, position)
        if key not in (_ZIP64_EXTRA, _PADDING_EXTRA):
            damaged(f"an extra field at byte {position} has an id ({key:#06x}) torch.save does not write")
        if position + 4 + size > end:
            damaged(f"an extra field at byte {position} runs past its entry")
        fields[key] = bytes(data[position + 4:position + 4 + size])
        position += 4 + size
    return fields


def _widened(zip64: bytes | None, damaged: _Reporter, *values: int) -> tuple[int, ...]:
    """The central directory's sizes, offset and disk, with saturated 32/16-bit fields read from its zip64 extra."""
    widths, saturated = (8, 8, 8, 4), (0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFF)
    result, position = [], 0
    for value, width, limit in zip(values, widths, saturated, strict=True):
        if value == limit:
            if zip64 is None or position + width > len(zip64):
                damaged("a zip directory entry lacks the zip64 field its sizes need")
            value = int.from_bytes(zip64[position:position + width], "little")
            position += width
        result.append(value)
    return tuple(result)
