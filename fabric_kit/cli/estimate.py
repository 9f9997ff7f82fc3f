"""fabric estimate - the memory each rank will hold, before launching anything.

Builds the model on the meta device (no memory is allocated and nothing is computed, whatever its size) and prints,
per rank, its parameters, gradients, float32 master weights and optimizer states as the strategy spreads them over
the devices, in the dtypes of the precision; with --sample-input also the activations one micro-batch keeps for
backward (with --activation-checkpointing, those of checkpointed blocks recomputed one at a time), and with
--memory the largest micro-batch that fits one device.

usage:
  fabric estimate MODULE:FACTORY [--strategy NAME] [--devices N] [--precision P] [--optimizer NAME]
                  [--sample-input MODULE:FN] [--activation-checkpointing [CLASS ...]] [--memory SIZE]

MODULE:FACTORY is a function (or class) that takes no arguments and returns the nn.Module; MODULE is imported as
`python -m` would (the current directory is on the path). MODULE:FN returns one micro-batch: a tensor, a tuple of
positional arguments or a dict of keyword arguments; its first tensor's leading dimension is the batch size.

  fabric estimate model:build_gpt --strategy fsdp --devices 8 --precision bf16-mixed
  fabric estimate model:build_gpt --strategy deepspeed_stage_3 --devices 8 --precision bf16-true \\
      --sample-input model:one_batch --activation-checkpointing Block --memory 80GiB

--activation-checkpointing alone checkpoints the modules held in an nn.ModuleList (the usual transformer blocks);
with class names, the modules of those classes. --memory takes bytes or a unit: 80GB (10**9 bytes), 80GiB (2**30).
The same figures in code: `fabric_kit.utilities.estimate_memory(...)`.

Not counted: communication buffers (DDP's gradient buckets, the parameters FSDP and ZeRO-3 gather for the module
being computed, DeepSpeed's reduce buckets), allocator fragmentation, the CUDA context; the offload presets are
counted as if the state stayed on the device. Under -mixed precisions activations are counted in float32, an upper
bound.

Exit status: 0 when printed; 1 when the model or sample input fails to build or run on the meta device, or the
strategy cannot be estimated, with a one-line message; 2 for a bad flag.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from fabric_kit.cli.parser import UsageError, positive_int


def add_parser(subcommands: Any) -> argparse.ArgumentParser:
    from fabric_kit.connector import precision_names, strategy_names
    from fabric_kit.memory_estimate import OPTIMIZER_STATES

    parser: argparse.ArgumentParser = subcommands.add_parser(
        "estimate", help="the memory each rank will hold, from the model on the meta device", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", metavar="MODULE:FACTORY", help="a function returning the nn.Module")
    parser.add_argument("--strategy", default="ddp", choices=strategy_names(), metavar="NAME",
                        help=f"one of: {', '.join(strategy_names())} (default: ddp)")
    parser.add_argument("--devices", type=positive_int, default=1, help="processes per machine (default: 1)")
    parser.add_argument("--num-nodes", type=positive_int, default=1, help="machines (default: 1)")
    parser.add_argument("--precision", default="32-true", choices=precision_names(), metavar="P",
                        help=f"one of: {', '.join(precision_names())} (default: 32-true)")
    parser.add_argument("--optimizer", default="adamw", choices=list(OPTIMIZER_STATES),
                        help="whose states to count (default: adamw)")
    parser.add_argument("--sample-input", metavar="MODULE:FN", help="a function returning one micro-batch")
    parser.add_argument("--activation-checkpointing", nargs="*", metavar="CLASS",
                        help="checkpoint the modules of an nn.ModuleList, or of these classes")
    parser.add_argument("--memory", metavar="SIZE", help="one device's memory, e.g. 80GiB: prints the largest "
                                                         "micro-batch that fits")
    parser.add_argument("--rank", type=int, default=0, help="the rank to estimate (default: 0, the largest shard)")
    parser.set_defaults(handler=estimate, parser=parser)
    return parser


def estimate(args: argparse.Namespace) -> int:
    from fabric_kit.memory_estimate import estimate_memory, parse_memory

    if args.memory is not None:
        try:
            parse_memory(args.memory)
        except ValueError as error:
            raise UsageError(f"argument --memory: {error}") from None
    sys.path.insert(0, os.getcwd())  # MODULE as `python -m` finds it
    factory = _load(args.model, "MODULE:FACTORY")
    sample_input = None if args.sample_input is None else _load(args.sample_input, "--sample-input MODULE:FN")
    checkpointing: Any = False
    if args.activation_checkpointing is not None:
        names = set(args.activation_checkpointing)
        checkpointing = (lambda module: type(module).__name__ in names) if names else True
    try:
        result = estimate_memory(factory, strategy=args.strategy, devices=args.devices, num_nodes=args.num_nodes,
                                 precision=args.precision, optimizer=args.optimizer,
                                 activation_checkpointing=checkpointing, sample_input=sample_input,
                                 memory=args.memory, rank=args.rank)
    except (NotImplementedError, ImportError) as error:
        print(f"fabric estimate: error: {error}", file=sys.stderr)
        return 1
    except ValueError as error:
        raise UsageError(str(error)) from None
    except Exception as error:  # noqa: BLE001 - the user's model failed on the meta device: say where, in one line
        print(f"fabric estimate: error: building or running {args.model} on the meta device failed: "
              f"{type(error).__name__}: {error}", file=sys.stderr)
        return 1
    print(f"{args.model}: {result.format()}")
    return 0


def _load(target: str, what: str) -> Any:
    from fabric_kit.lazy import resolve

    if target.count(":") != 1 or not all(target.split(":")):
        raise UsageError(f"{what}: {target!r} is not MODULE:NAME, e.g. mypackage.model:build")
    try:
        return resolve(target)
    except (ImportError, AttributeError) as error:
        raise UsageError(f"{what}: cannot load {target!r}: {error}") from None
