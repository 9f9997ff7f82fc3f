"""fabric - the command line of fabric_kit.

subcommands:
  fabric run ...          launch a script on every device of one or more machines (see: fabric run --help)
  fabric consolidate ...  turn a sharded checkpoint directory into one file (see: fabric consolidate --help)
  fabric estimate ...     the memory each rank will hold, from the model on the meta device (see: fabric estimate
                          --help)

Runs as the fabric console script, as python -m fabric_kit, or from code:
  from fabric_kit.cli.main import main
  exit_status = main(["run", "--devices", "2", "train.py"])
"""
from __future__ import annotations

import argparse
import gc
from collections.abc import Sequence

from fabric_kit.cli import consolidate as consolidate_command
from fabric_kit.cli import estimate as estimate_command
from fabric_kit.cli import run as run_command
from fabric_kit.cli.parser import OneLineParser, UsageError


def build_parser() -> argparse.ArgumentParser:
    """The ``fabric`` parser; each subcommand registers its own sub-parser and sets ``handler``."""
    parser = OneLineParser(prog="fabric", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    subcommands = parser.add_subparsers(title="subcommands", dest="command", required=True, metavar="COMMAND")
    run_command.add_parser(subcommands)
    consolidate_command.add_parser(subcommands)
    estimate_command.add_parser(subcommands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the subcommand and return its exit status.

    Flag errors exit with status 2 (``SystemExit``), as argparse does.
    """
    args = build_parser().parse_args(argv)
    try:
        status: int = args.handler(args)
    except UsageError as error:
        args.parser.error(str(error))
    if argv is None:
        # The process exits next: spare it the final collection over torch's object graph (about 0.5 s).
        gc.freeze()
    return status
