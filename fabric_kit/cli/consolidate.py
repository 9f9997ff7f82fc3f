"""fabric consolidate - turn a sharded checkpoint directory into one file that plain torch.load reads.

  fabric consolidate runs/fsdp_transformer --output model.pt
  python -c "import torch; model.load_state_dict(torch.load('model.pt')['model'])"

No process group is needed: one process reads every shard.
"""
from __future__ import annotations

import argparse
from typing import Any

from fabric_kit.cli.parser import UsageError


def add_parser(subcommands: Any) -> argparse.ArgumentParser:
    parser = subcommands.add_parser("consolidate", help="turn a sharded checkpoint directory into one file",
                                    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint_dir", metavar="CHECKPOINT_DIR", help="a directory saved by strategy='fsdp'")
    parser.add_argument("--output", required=True, metavar="FILE", help="the single checkpoint file to write")
    parser.set_defaults(handler=consolidate, parser=parser)
    return parser


def consolidate(args: argparse.Namespace) -> int:
    from fabric_kit.checkpoint.consolidate import consolidate as gather_shards

    try:
        gather_shards(args.checkpoint_dir, args.output)
    except (ValueError, FileNotFoundError) as error:
        raise UsageError(str(error)) from None
    print(f"wrote {args.output}")
    return 0
