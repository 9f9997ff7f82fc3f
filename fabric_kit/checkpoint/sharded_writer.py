"""torch.distributed.checkpoint's file writer, extended in two ways through its public extension points:

- Every file it writes is checksummed while it is written (`ChecksummedFile`, through the writer's `fs`), and the
  records reach the coordinator with DCP's own gathering of the ranks' write results, so a sharded save reads
  nothing back and needs no collective of its own for its manifest. Each rank adds one `WriteResult` with its
  records to those of its writes; the coordinator's `finish` takes them out before DCP's metadata is written, so
  the metadata is exactly what DCP alone writes.
- Write failures keep their operating-system error when DCP hands them to the other ranks. DCP gathers every
  rank's failure on one rank and sends the verdict to all by pickling the exceptions, which drops their causes and
  contexts. A full disk that torch's zip writer reports as `unexpected pos 704 vs 598`, with the `OSError` only in
  its context, would reach every rank without the system's words. This writer raises that OSError itself (its
  errno, message and file name survive pickling), so `reported_write_errors` names it on every rank.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch.distributed.checkpoint import FileSystemWriter, Metadata, SavePlan, SavePlanner
from torch.distributed.checkpoint.filesystem import FileSystem
from torch.distributed.checkpoint.metadata import MetadataIndex
from torch.distributed.checkpoint.storage import WriteResult
from torch.futures import Future

from fabric_kit.checkpoint.crc import ChecksummedFile
from fabric_kit.checkpoint.directory import Records
from fabric_kit.checkpoint.errors import os_error_behind

_RECORDS = MetadataIndex("fabric_kit: the files this rank wrote, with their sizes and CRC-32s")


class ChecksummingFileSystem(FileSystem):
    """DCP's local file system, whose files opened for writing are `ChecksummedFile`s: each one's size and CRC-32
    go into `records` (under its path relative to `root`) when it is closed, and move with it when renamed."""

    def __init__(self, root: Path, records: Records) -> None:
        super().__init__()
        self.root = root
        self.records = records

    @contextmanager
    def create_stream(self, path: str | os.PathLike[str], mode: str) -> Iterator[Any]:
        if "r" in mode:
            with super().create_stream(path, mode) as stream:
                yield stream
            return
        with ChecksummedFile(path) as file:
            yield file
        self.records[self._name(path)] = {"size": file.size, "crc32": file.crc}

    def rename(self, path: str | os.PathLike[str], new_path: str | os.PathLike[str]) -> None:
        super().rename(path, new_path)
        record = self.records.pop(self._name(path), None)
        if record is not None:
            self.records[self._name(new_path)] = record

    def _name(self, path: str | os.PathLike[str]) -> str:
        return Path(path).relative_to(self.root).as_posix()


class ReportingFileSystemWriter(FileSystemWriter):
    """A `FileSystemWriter` into the directory `path` that records every file it writes in `records` (after
    `dcp.save`, on the coordinator: every rank's files) and fails with the OSError behind a write failure, where
    there is one."""

    def __init__(self, path: str | os.PathLike[str], records: Records) -> None:
        super().__init__(path)
        self.fs = ChecksummingFileSystem(Path(path), records)
        self.records = records

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        try:
            results = super().write_data(plan, planner).wait()
        except Exception as error:
            cause = os_error_behind(error)
            if cause is None or cause is error:
                raise
            raise OSError(cause.errno, cause.strerror, cause.filename) from error
        done: Future[list[WriteResult]] = Future()
        done.set_result([*results, WriteResult(index=_RECORDS, size_in_bytes=0, storage_data=dict(self.records))])
        return done

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        for result in (r for rank_results in results for r in rank_results if r.index == _RECORDS):
            self.records.update(result.storage_data)
        super().finish(metadata, [[r for r in rank_results if r.index != _RECORDS] for rank_results in results])
