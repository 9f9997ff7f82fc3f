"""Reading torch.distributed.checkpoint (DCP) directories without running code stored in them.

DCP's own reader unpickles a directory's `.metadata` with the full unpickler, and its load planner reads every
non-tensor entry of the shards (optimizer param groups, plain values) with `torch.load(weights_only=False)`; a
directory anyone could write would run their code on load. Here both go through restricted loaders by default:

- `.metadata` through `MetadataUnpickler`, which builds only the types DCP writes there;
- non-tensor entries through `torch.load(weights_only=True)`: tensors and plain containers.

`weights_only=False` restores DCP's own unpicklers, for checkpoints from a trusted source. A refusal raises
`UnsafeCheckpointError` naming the file and that opt-in. The pieces plug into DCP through its public extension
points: a `FileSystemReader` subclass passed as `storage_reader=`, and a `DefaultLoadPlanner` subclass as `planner=`.
"""
from __future__ import annotations

import dataclasses
import io
import mmap
import os
import pickle
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, BinaryIO

import torch
import torch.distributed.checkpoint as dcp
import torch.futures
from torch.distributed.checkpoint import CheckpointException, DefaultLoadPlanner, FileSystemReader, Metadata
from torch.distributed.checkpoint.metadata import StorageMeta
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, LoadPlanner, ReadItem

from fabric_kit.checkpoint.errors import (
    OPT_IN,
    CheckpointCorruptedError,
    CheckpointError,
    UnsafeCheckpointError,
    weights_only_refusal,
)
from fabric_kit.checkpoint.sharded import DCP_METADATA
from fabric_kit.checkpoint.tensor_records import read_tensor, tensor_layout

# What a `.metadata` written by DCP (torch 2.4 and later, from plain tensors or DTensors, models and optimizers)
# refers to by name, found by listing the globals of real ones. Each builds plain data and runs nothing else: the
# dataclasses are rebuilt field by field, torch.Size from a tuple, the enum encodes the memory format, and
# `_get_layout` maps a layout's name to the torch.layout object. `_StorageInfo` (where a chunk lies in which
# shard file) and the path types (the `checkpoint_id` the save was given) appear in the file under these names.
_METADATA_GLOBALS = frozenset({
    *(("torch.distributed.checkpoint.metadata", name) for name in (
        "Metadata", "StorageMeta", "MetadataIndex", "TensorStorageMetadata", "BytesStorageMetadata",
        "ChunkStorageMetadata", "TensorProperties", "_MEM_FORMAT_ENCODING")),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
})


class RefusedGlobal(pickle.UnpicklingError):
    """`MetadataUnpickler` met a name outside what DCP's metadata holds."""


class MetadataUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals a DCP `.metadata` holds (and torch dtypes); any other name
    raises `RefusedGlobal` before anything of it is imported or called."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _METADATA_GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise RefusedGlobal(f"{module}.{name} is not one of the types torch.distributed.checkpoint stores in its "
                            "metadata")


def read_metadata(path: str | os.PathLike[str], weights_only: bool = True) -> Metadata:
    """The DCP metadata of the checkpoint directory `path`, read with `MetadataUnpickler` (or, with
    `weights_only=False`, the full unpickler). A refused object raises `UnsafeCheckpointError`; a file that is
    missing, unreadable or not DCP metadata `CheckpointCorruptedError`."""
    file = Path(path) / DCP_METADATA
    try:
        with open(file, "rb") as f:
            return _unpickle_metadata(f, file, weights_only)
    except FileNotFoundError as error:
        raise CheckpointCorruptedError(file, "missing: a sharded checkpoint directory needs its DCP metadata "
                                             "file") from error


def _unpickle_metadata(f: BinaryIO, file: Path, weights_only: bool) -> Metadata:
    try:
        metadata = MetadataUnpickler(f).load() if weights_only else pickle.load(f)
    except RefusedGlobal as error:
        raise UnsafeCheckpointError(file, f"the safe loader refused the checkpoint's metadata: {error}. "
                                          f"{OPT_IN}") from error
    except Exception as error:  # a torn or garbled pickle fails in many ways (EOFError, ValueError, KeyError, ...)
        raise CheckpointCorruptedError(file, f"damaged: unpickling the metadata failed ({error!r})") from error
    if not isinstance(metadata, Metadata):
        raise CheckpointCorruptedError(file, f"damaged: holds a {type(metadata).__name__}, not "
                                             "torch.distributed.checkpoint's Metadata")
    return metadata


class SafeFileSystemReader(FileSystemReader):
    """DCP's reader of a local directory, with its `.metadata` read by `read_metadata` (restricted unless
    `weights_only=False`), or the `metadata` given (already read that way). The shards' plain tensors are read
    straight into the state dict's (`tensor_records`: the same values as DCP's reader, without a `torch.load` per
    tensor); any other stored tensor DCP's reader loads with `torch.load(weights_only=True)`.

    `verified`, when given, is the verification of the shards (`directory.verifying_directory`): it is waited for
    as this rank's load plan is made, before anything is read into the state dict. A failure there is one of DCP's
    planning step, which DCP's own collective hands to every rank, so no rank reads a shard unless every rank's
    share of the files verified, and the ranks agree on it without a collective of their own."""

    def __init__(self, path: str | os.PathLike[str], weights_only: bool = True,
                 metadata: Metadata | None = None, verified: Future[None] | None = None) -> None:
        super().__init__(path)
        self.weights_only = weights_only
        self.known_metadata = metadata
        self.verified = verified

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        if self.verified is not None:
            self.verified.result()
        return super().prepare_local_plan(plan)

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> torch.futures.Future[None]:
        """Read the plan's tensors the way `tensor_records` does, straight into their destinations; what it does
        not read (bytes entries, other tensors) goes through DCP's own reader."""
        rest = []
        by_file: dict[str, list[ReadItem]] = {}
        for item in plan.items:
            info = self.storage_data[item.storage_index]
            if item.type == LoadItemType.BYTE_IO or info.transform_descriptors:
                rest.append(item)
            else:
                by_file.setdefault(info.relative_path, []).append(item)
        for relative_path, items in by_file.items():
            rest += self._read_tensors(Path(self.path) / relative_path, items, planner)
        if rest:
            return super().read_data(dataclasses.replace(plan, items=rest), planner)
        done: torch.futures.Future[None] = torch.futures.Future()
        done.set_result(None)
        return done

    def _read_tensors(self, file: Path, items: list[ReadItem], planner: LoadPlanner) -> list[ReadItem]:
        """Read into their destinations the tensors of `items`, all stored in `file`; return those it left."""
        left = []
        with open(file, "rb", buffering=0) as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapping:
            for item in items:
                info = self.storage_data[item.storage_index]
                with memoryview(mapping)[info.offset:info.offset + info.length] as archive:
                    layout = tensor_layout(archive, file)
                if layout is None:
                    left.append(item)
                    continue
                target = planner.resolve_tensor(item).detach()
                read_tensor(f, info.offset, layout, target, item.storage_offsets, item.lengths)
                planner.commit_tensor(item, target)
        return left

    def read_metadata(self) -> Metadata:
        # No `rank` keyword: fabric_kit writes one global `.metadata`, so DCP never falls back to per-rank files.
        metadata = self.known_metadata or read_metadata(self.path, self.weights_only)
        # As FileSystemReader does: this load's id travels with the metadata to the planner.
        metadata.storage_meta = metadata.storage_meta or StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's default load planner, reading the shards' non-tensor entries with `torch.load(weights_only=True)`
    unless `weights_only=False`. `directory` names the checkpoint in errors."""

    def __init__(self, directory: str | os.PathLike[str], weights_only: bool = True, **options: Any) -> None:
        super().__init__(**options)
        self.directory = Path(directory)
        self.weights_only = weights_only

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        fqn = read_item.dest_index.fqn
        try:
            obj = torch.load(value, map_location="cpu", weights_only=self.weights_only)
        except pickle.UnpicklingError as error:
            file = self._file_of(read_item)
            if not self.weights_only:
                raise CheckpointCorruptedError(file, f"damaged: unpickling its entry {fqn!r} failed ({error})"
                                               ) from error
            raise UnsafeCheckpointError(file, f"the safe loader refused its entry {fqn!r}: it holds objects beyond "
                                              f"tensors and plain containers ({weights_only_refusal(error)}). "
                                              f"{OPT_IN}") from error
        if self.flatten_state_dict:
            set_nested(self.original_state_dict, self.mappings[fqn], obj)
        else:
            self.state_dict[fqn] = obj

    def _file_of(self, read_item: ReadItem) -> Path:
        """The shard file holding `read_item` (the directory when the metadata does not say)."""
        storage_data = getattr(self.metadata, "storage_data", None) or {}
        relative = getattr(storage_data.get(read_item.storage_index), "relative_path", None)
        return self.directory / relative if isinstance(relative, str) else self.directory


def set_nested(root: dict[str, Any], path: Sequence[str | int], value: Any) -> None:
    """Put `value` at `path` inside `root`, creating what is missing on the way: a dict where the next key is a
    string, a list (padded with None) where it is an index. DCP names every flattened entry by such a path (its
    metadata's `planner_data`), e.g. ("optimizer", "param_groups", 0, "lr")."""
    container: Any = root
    for key, following in zip(path, path[1:], strict=False):
        empty: Any = [] if isinstance(following, int) else {}
        if isinstance(container, list):
            index = int(key)  # a list was made because this key is an index
            container.extend([None] * (index + 1 - len(container)))
            if container[index] is None:
                container[index] = empty
            container = container[index]
        else:
            container = container.setdefault(key, empty)
    last = path[-1]
    if isinstance(container, list):
        last = int(last)
        container.extend([None] * (last + 1 - len(container)))
    container[last] = value


def load_sharded(state_dict: dict[str, Any], path: str | os.PathLike[str], strict: bool = True,
                 weights_only: bool = True, no_dist: bool = False, verified: Future[None] | None = None) -> None:
    """`dcp.load(state_dict, ...)` from the directory `path`, in place, running no code stored in it unless
    `weights_only=False`. `strict=False` leaves entries the checkpoint lacks as they are. Collective over the
    process group unless `no_dist`. Nothing is read into `state_dict` before `verified` (the shards'
    verification, see `SafeFileSystemReader`) succeeded on every rank.

    The metadata is read up front and handed to DCP's reader, so a refused or damaged `.metadata` raises its own
    error on every rank: inside `dcp.load` DCP would log it as a missing file and raise an AssertionError. A
    refusal inside the shards comes back out of DCP's per-rank `CheckpointException` as the `CheckpointError` it
    was."""
    metadata = read_metadata(path, weights_only)
    try:
        dcp.load(state_dict, storage_reader=SafeFileSystemReader(path, weights_only, metadata, verified),
                 planner=SafeLoadPlanner(path, weights_only, allow_partial_load=not strict), no_dist=no_dist)
    except CheckpointException as error:
        failures = [failure[0] if isinstance(failure, tuple) else failure for failure in error.failures.values()]
        reported = next((failure for failure in failures if isinstance(failure, CheckpointError)), None)
        if reported is None:
            raise
        raise reported from error
