"""Reading a tensor that torch.save wrote on its own, as torch.distributed.checkpoint (DCP) stores every shard,
straight into the tensor it restores.

DCP's reader gives each stored tensor to `torch.load`: per tensor a zip reader, torch's weights-only unpickler
(Python) and a fresh tensor that is then copied into the destination. On a model of a few hundred tensors that
per-tensor work, not the bytes, is most of a load. Here a stored tensor's archive is read in place: its structure
through `integrity.records`, its pickle through `LayoutUnpickler`, which builds nothing but the layout (dtype,
size, stride, storage offset) of the one plain tensor torch.save describes there, and the storage's bytes are
read from the file directly into the destination when it has that layout, else into one buffer viewed with it.

Anything else (another dtype, a tensor subclass, Python state on the tensor, a big-endian file) is no
`TensorLayout`, and the caller leaves it to torch.load."""
from __future__ import annotations

import io
import math
import os
import pickle
import sys
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fabric_kit.checkpoint import integrity
from fabric_kit.checkpoint.errors import CheckpointCorruptedError

_STORAGE_DTYPES = {"FloatStorage": torch.float32, "BFloat16Storage": torch.bfloat16, "HalfStorage": torch.float16,
                   "DoubleStorage": torch.float64}
"""The storage classes torch.save names in the pickle, for the dtypes read here."""


@dataclass(frozen=True)
class TensorLayout:
    """A stored tensor: its dtype and view of the storage, and where the storage's bytes lie in the archive."""

    dtype: torch.dtype
    size: tuple[int, ...]
    stride: tuple[int, ...]
    storage_offset: int
    data: integrity.Record

    @property
    def contiguous(self) -> bool:
        """Whether the tensor is the whole storage, row-major: its bytes are exactly the record's."""
        return (self.storage_offset == 0 and self.stride == _row_major(self.size)
                and math.prod(self.size) * self.dtype.itemsize == self.data.size)


class _NotPlain(pickle.UnpicklingError):
    """The pickle describes something other than one plain CPU tensor of a dtype in `_STORAGE_DTYPES`."""


class LayoutUnpickler(pickle.Unpickler):
    """Unpickles the `data.pkl` of a `torch.save(tensor)` archive into `(storage, storage_offset, size, stride)`,
    where `storage` is `(dtype, key, element count)`. The only names it resolves are torch's tensor-rebuilding
    function (to `_layout`, which builds nothing), `OrderedDict` (the empty backward hooks) and the storage
    classes of `_STORAGE_DTYPES`; any other raises before anything is imported."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _layout
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        raise _NotPlain(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> tuple[torch.dtype, str, int]:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and pid[3] == "cpu"
                and isinstance(pid[1], torch.dtype) and isinstance(pid[2], str) and isinstance(pid[4], int)):
            raise _NotPlain(f"storage {pid!r}")
        return pid[1], pid[2], pid[4]


def _layout(storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any, hooks: Any,
            metadata: Any = None) -> tuple[Any, ...]:
    if hooks or metadata:
        raise _NotPlain("a tensor with backward hooks or Python state")
    return storage, storage_offset, size, stride


def tensor_layout(archive: memoryview, file: str | os.PathLike[str]) -> TensorLayout | None:
    """The layout of the tensor that the torch.save archive `archive` (a view of part of `file`) holds, or None
    when it holds anything but one plain tensor read here. A damaged archive raises `CheckpointCorruptedError`
    naming `file`."""
    records = {record.name.partition("/")[2]: record for record in integrity.records(archive, file)}
    pickled, byteorder = records.get("data.pkl"), records.get("byteorder")
    if pickled is None or byteorder is None or _bytes(archive, byteorder) != sys.byteorder.encode():
        return None
    try:
        (dtype, key, count), storage_offset, size, stride = LayoutUnpickler(io.BytesIO(_bytes(archive, pickled))).load()
    except (_NotPlain, ValueError, TypeError, EOFError):
        return None
    data = records.get(f"data/{key}")
    if data is None or data.size != count * dtype.itemsize or not _within(storage_offset, size, stride, count):
        return None
    return TensorLayout(dtype, tuple(size), tuple(stride), storage_offset, data)


def read_tensor(file: io.FileIO, position: int, layout: TensorLayout, target: Tensor, offsets: Sequence[int],
                lengths: Sequence[int]) -> None:
    """Copy the box `offsets`/`lengths` of the stored tensor (its archive starting at byte `position` of the open
    `file`) into `target`: straight into `target`'s memory when that is the whole tensor, contiguous, of its
    dtype and on the CPU; else through one buffer of the storage's bytes."""
    start = position + layout.data.start
    whole = all(offset == 0 for offset in offsets) and tuple(lengths) == layout.size
    if (whole and layout.contiguous and target.device.type == "cpu" and target.dtype == layout.dtype
            and tuple(target.shape) == layout.size and target.is_contiguous()):
        _read_exactly(file, start, target.view(-1).view(torch.uint8))
        return
    buffer = torch.empty(layout.data.size, dtype=torch.uint8)
    _read_exactly(file, start, buffer)
    source = buffer.view(layout.dtype).as_strided(layout.size, layout.stride, layout.storage_offset)
    for dim, (offset, length) in enumerate(zip(offsets, lengths, strict=True)):
        source = source.narrow(dim, offset, length)
    target.copy_(source)


def _read_exactly(file: io.FileIO, position: int, buffer: Tensor) -> None:
    """Fill the uint8 CPU tensor `buffer` from byte `position` of `file` (a read may return less than asked)."""
    file.seek(position)
    with buffer.numpy().data as view:  # a uint8 tensor: a view of format "B"
        done = 0
        while done < len(view):
            read = file.readinto(view[done:])
            if not read:
                raise CheckpointCorruptedError(file.name, f"damaged: the file ends at byte {position + done}, "
                                                          "inside a stored tensor")
            done += read


def _bytes(archive: memoryview, record: integrity.Record) -> bytes:
    return bytes(archive[record.start:record.start + record.size])


def _within(storage_offset: Any, size: Any, stride: Any, count: int) -> bool:
    """Whether `size`, `stride` and `storage_offset` (as unpickled) view only elements of a storage of `count`."""
    if not (isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride)
            and all(isinstance(n, int) and n >= 0 for n in (storage_offset, *size, *stride))):
        return False
    return 0 in size or storage_offset + sum((n - 1) * step for n, step in zip(size, stride, strict=True)) < count


def _row_major(size: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for length in reversed(size):
        strides.append(step)
        step *= max(length, 1)
    return tuple(reversed(strides))
