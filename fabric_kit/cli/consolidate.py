"""fabric consolidate - turn a sharded checkpoint directory into one file that plain torch.load reads.

  fabric consolidate runs/fsdp_transformer --output model.pt
  python -c "import torch; model.load_state_dict(torch.load('model.pt')['model'])"

No process group is needed: one process reads every shard.

Safe by default: the directory's metadata and entries are read by loaders that build only tensors, plain containers
and the types torch.distributed.checkpoint stores, so a crafted file cannot run code. --no-weights-only reads them
with the full unpickler, for a checkpoint from a trusted source only.

Exit status: 0 when the file was written; 1 when the checkpoint is damaged (a missing, resized or changed file, a
missing manifest) or the safe loaders refuse it, with a one-line message naming the file; 2 for a bad flag or a
path that holds no sharded checkpoint.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

from fabric_kit.cli.parser import UsageError


def add_parser(subcommands: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subcommands.add_parser(
        "consolidate", help="turn a sharded checkpoint directory into one file", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint_dir", metavar="CHECKPOINT_DIR", help="a directory saved by strategy='fsdp'")
    parser.add_argument("--output", required=True, metavar="FILE", help="the single checkpoint file to write")
    parser.add_argument("--weights-only", action=argparse.BooleanOptionalAction, default=True,
                        help="read only tensors, plain containers and DCP's metadata types (the default); "
                             "--no-weights-only unpickles anything, for trusted checkpoints only")
    parser.set_defaults(handler=consolidate, parser=parser)
    return parser


def consolidate(args: argparse.Namespace) -> int:
    from fabric_kit.checkpoint.consolidate import consolidate as gather_shards
    from fabric_kit.checkpoint.errors import CheckpointError, UnsafeCheckpointError

    try:
        gather_shards(args.checkpoint_dir, args.output, weights_only=args.weights_only)
    except CheckpointError as error:
        hint = (" (for a checkpoint from a trusted source: fabric consolidate ... --no-weights-only)"
                if isinstance(error, UnsafeCheckpointError) else "")
        print(f"fabric consolidate: error: {_one_line(str(error))}{hint}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as error:
        raise UsageError(str(error)) from None
    print(f"wrote {args.output}")
    return 0


def _one_line(message: str) -> str:
    return " ".join(message.split())
