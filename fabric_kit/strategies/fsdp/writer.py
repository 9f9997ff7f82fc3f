"""torch.distributed.checkpoint's file writer, with write failures that keep their operating-system error when DCP
hands them to the other ranks.

DCP gathers every rank's failure on one rank and sends the verdict to all by pickling the exceptions, which drops
their causes and contexts. A full disk that torch's zip writer reports as `unexpected pos 704 vs 598`, with the
`OSError` only in its context, would reach every rank without the system's words. This writer raises that OSError
itself (its errno, message and file name survive pickling), so `reported_write_errors` names it on every rank."""
from __future__ import annotations

from typing import Any

from torch.distributed.checkpoint import FileSystemWriter

from fabric_kit.checkpoint.errors import os_error_behind


class ReportingFileSystemWriter(FileSystemWriter):
    """A `FileSystemWriter` whose `write_data` fails with the OSError behind its failure, where there is one."""

    def write_data(self, plan: Any, planner: Any) -> Any:
        try:
            return super().write_data(plan, planner)
        except Exception as error:
            cause = os_error_behind(error)
            if cause is None or cause is error:
                raise
            raise OSError(cause.errno, cause.strerror, cause.filename) from error
