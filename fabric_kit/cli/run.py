"""fabric run - launch a training script on every device of one or more machines.

Start one process per device, each running the script unchanged. Process management (rendezvous, multi-node
wiring, stopping every process when one fails, elastic restarts) is PyTorch's own torch.distributed.run, the
engine behind torchrun, called in-process; this command only translates its flags, which are named like the
arguments of Fabric(...), and passes them on to the script's Fabric through environment variables.

usage:
  fabric run [flags] SCRIPT [SCRIPT ARGS ...]
  fabric run [flags] -m PACKAGE.MODULE [MODULE ARGS ...]
  python -m fabric_kit run ...            (the same, without the console script)

Everything after SCRIPT (or the module name) goes to the script untouched, including flags.

One machine
  2 CPU processes, talking over gloo:
      fabric run --accelerator cpu --devices 2 train.py --lr 0.1
  every GPU of the machine, one process each (the strategy picks nccl):
      fabric run --accelerator cuda --devices auto train.py
  GPUs 0 and 1 only: 2 processes, and FABRIC_KIT_DEVICES=0,1 tells Fabric which GPUs (local rank i drives the
  i-th listed GPU; CUDA_VISIBLE_DEVICES is left alone):
      fabric run --accelerator cuda --devices 0,1 train.py
  a module instead of a file, as with python -m:
      fabric run --devices 2 -m mypackage.train --epochs 3
  TPUs: --accelerator tpu (or xla) starts one process, and Fabric's XLA strategy starts one per core.

Several machines
  Run the same command on every machine, changing only --node-rank. --main-address is the address of the
  machine with node rank 0, reachable from the others; its launcher hosts the rendezvous store on --main-port
  (static rendezvous: every node must start).
      machine A, 10.0.0.1:  fabric run --num-nodes 2 --node-rank 0 --main-address 10.0.0.1 --devices 8 train.py
      machine B:            fabric run --num-nodes 2 --node-rank 1 --main-address 10.0.0.1 --devices 8 train.py

Restarts
  When a process fails, the launcher stops the others on its machine. With --max-restarts N it then starts the
  whole group again, up to N times; TORCHELASTIC_RESTART_COUNT tells the script which round it is in, so it can
  resume from its last checkpoint:
      fabric run --devices 4 --max-restarts 3 train.py

Schedulers and torchrun
  Under SLURM start the script with srun, one task per device, and no fabric run: Fabric reads SLURM's variables
  itself. A script started by torchrun works too. The script needs no change in any of these cases.

What the script receives
  FABRIC_KIT_ACCELERATOR   --accelerator, when given
  FABRIC_KIT_STRATEGY      --strategy, when given
  FABRIC_KIT_DEVICES       --devices: the list as given, otherwise the number of processes started per machine
  FABRIC_KIT_NUM_NODES     --num-nodes
  FABRIC_KIT_PRECISION     --precision, when given
  FABRIC_KIT_COLLECTIVE_TIMEOUT  --collective-timeout, when given
  OMP_NUM_THREADS          CPU count // processes per machine (at least 1), unless already set
  plus torchrun's RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT, ...
  Fabric(...) takes these as its defaults; an explicit argument in the script that contradicts a flag is an
  error naming both.

Signals and hangs
  SIGTERM, SIGINT, SIGHUP, SIGQUIT and SIGUSR1 are passed on to every process, which then get --grace-period
  seconds (default 30) to end, e.g. after saving a checkpoint at the step where `fabric.preempted` turned True,
  before SIGKILL; the same grace applies to the others when one process fails. A process that waits in one
  collective longer than --collective-timeout (default 600 s) ends the job with an error naming the ranks, the
  operations and their source lines (exit status 124).
      fabric run --devices 8 --collective-timeout 120 --grace-period 90 train.py

Exit status
  0 when every process succeeds. When one fails, its traceback is shown (the process's own stderr, then
  torchrun's error record), the other processes are stopped, and the exit status is the failed process's:
  its own, or 128 + the signal that killed it (137 for SIGKILL). 124 when the collective watchdog ended a hang.
  128 + the signal when this command received one (143 for SIGTERM, 130 for SIGINT).
  1 when the machines could not meet (e.g. --main-port already in use). 2 for a bad flag. Both with a one-line
  message.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fabric_kit.cli.devices import ACCEPTED, format_devices, parse_devices, processes_per_node
from fabric_kit.cli.parser import UsageError, non_negative_float, non_negative_int, port, positive_int
from fabric_kit.strategies.launchers.processes import DEFAULT_GRACE_PERIOD, exit_status, root_cause
from fabric_kit.watchdog import DEFAULT_COLLECTIVE_TIMEOUT

# Machines must agree on the rendezvous port without talking first; a single machine picks a free one instead.
MULTI_NODE_PORT = 29400
# torchrun's own list, plus SIGUSR1: SLURM's warning before the time limit (`--signal=USR1@<seconds>`), which the
# script's `fabric.preempted` listens to under SLURM. torchrun passes each on to every process.
FORWARDED_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"


def add_parser(subcommands: Any) -> argparse.ArgumentParser:
    """Register ``run`` on the ``fabric`` parser's subcommands. The accepted names come from fabric_kit itself, so
    the launcher never accepts what ``Fabric(...)`` would reject."""
    from fabric_kit.connector import accelerator_names, precision_names, strategy_names

    parser: argparse.ArgumentParser = subcommands.add_parser(
        "run", help="launch a script on every device of one or more machines", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
    )
    accelerators, strategies, precisions = accelerator_names(), strategy_names(), precision_names()
    parser.add_argument("--accelerator", choices=accelerators, metavar="NAME",
                        help=f"device type, one of: {', '.join(accelerators)}. Default: the script's choice")
    parser.add_argument("--strategy", choices=strategies, metavar="NAME",
                        help=f"distribution strategy, one of: {', '.join(strategies)}. Default: the script's choice")
    parser.add_argument("--devices", type=parse_devices, default="auto", metavar="N|I,J|auto",
                        help=f"devices per machine, one process each: {ACCEPTED}. auto means 1 process on CPU "
                             "and every GPU on CUDA. Default: auto")
    parser.add_argument("--num-nodes", type=positive_int, default=1, metavar="N",
                        help="number of machines, a positive integer. Default: 1")
    parser.add_argument("--node-rank", type=non_negative_int, default=0, metavar="R",
                        help="this machine's index, 0..num-nodes-1; node 0 hosts the rendezvous. Default: 0")
    parser.add_argument("--main-address", default="127.0.0.1", metavar="HOST",
                        help="host name or IP of node 0, reachable from every machine. Default: 127.0.0.1")
    parser.add_argument("--main-port", type=port, metavar="PORT",
                        help=f"port on node 0 for the rendezvous, 1..65535. Default: a free port on one machine, "
                             f"{MULTI_NODE_PORT} with --num-nodes > 1")
    parser.add_argument("--precision", choices=precisions, metavar="NAME",
                        help=f"numeric precision, one of: {', '.join(precisions)}. Default: the script's choice")
    parser.add_argument("--max-restarts", type=non_negative_int, default=0, metavar="N",
                        help="times to restart all processes after a failure, an integer >= 0. Default: 0")
    parser.add_argument("--collective-timeout", type=non_negative_float, metavar="SECONDS",
                        help="seconds a process may wait inside one collective before the job ends with an error "
                             "naming the ranks and operations; 0 turns the watchdog off. Default: the script's "
                             f"choice, else {DEFAULT_COLLECTIVE_TIMEOUT:.0f}")
    parser.add_argument("--grace-period", type=non_negative_int, default=int(DEFAULT_GRACE_PERIOD), metavar="SECONDS",
                        help="seconds the processes get to end after a forwarded signal (SIGTERM, SIGINT, SIGHUP, "
                             "SIGQUIT, SIGUSR1) or another process's failure, before SIGKILL. "
                             f"Default: {DEFAULT_GRACE_PERIOD:.0f}")
    parser.add_argument("-m", "--module", action="store_true",
                        help="SCRIPT is a module name, run as with python -m")
    parser.add_argument("script", nargs="?", metavar="SCRIPT", help="path of the script (or module name with -m)")
    parser.add_argument("script_args", nargs=argparse.REMAINDER, metavar="...",
                        help="arguments for the script, passed untouched")
    parser.set_defaults(handler=run, parser=parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Launch ``args.script`` as described by the flags and return the exit status of the job.

    Raises UsageError for flags that contradict each other or this machine.
    """
    if args.node_rank >= args.num_nodes:
        raise UsageError(f"--node-rank {args.node_rank} is out of range for --num-nodes {args.num_nodes}: "
                         f"expected 0..{args.num_nodes - 1}")
    if args.script is None:
        raise UsageError("missing SCRIPT: the path of the script to launch (or -m and a module name)")
    if not args.module and not os.path.isfile(args.script):
        raise UsageError(f"script {args.script!r} does not exist (to run a module, pass -m {args.script})")
    try:
        processes = processes_per_node(args.devices, args.accelerator or "auto")
    except ValueError as error:
        raise UsageError(str(error)) from None
    with _exported(script_environment(args, processes)):
        return _launch(torchrun_arguments(args, processes))


def torchrun_arguments(args: argparse.Namespace, processes: int) -> list[str]:
    """The torchrun command line equivalent to the flags.

    Always a static rendezvous: node 0's launcher hosts the store. On one machine without --main-port the port is
    a free one picked here; torchrun's own default for that case, a dynamic c10d rendezvous, costs about 0.2 s more
    per launch and buys nothing when the world cannot change size.
    """
    main_port = args.main_port or (MULTI_NODE_PORT if args.num_nodes > 1 else free_port())
    arguments = ["--nnodes", str(args.num_nodes), "--nproc-per-node", str(processes),
                 "--max-restarts", str(args.max_restarts), "--rdzv-backend", "static",
                 "--node-rank", str(args.node_rank), "--master-addr", args.main_address,
                 "--master-port", str(main_port), "--shutdown-timeout", str(args.grace_period),
                 "--signals-to-handle", FORWARDED_SIGNALS]
    if args.module:
        arguments.append("--module")
    return [*arguments, args.script, *args.script_args]


def free_port() -> int:
    """A port nobody listens on now. Should another program take it before torchrun binds it, torchrun fails
    with "address already in use" naming the port, and nothing runs: never two jobs on one store."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("", 0))  # every interface, as the store will listen
        return int(probe.getsockname()[1])


def script_environment(args: argparse.Namespace, processes: int) -> dict[str, str]:
    """The variables through which the flags reach ``Fabric(...)`` in every process."""
    environment = {"FABRIC_KIT_NUM_NODES": str(args.num_nodes)}
    if args.collective_timeout is not None:
        environment["FABRIC_KIT_COLLECTIVE_TIMEOUT"] = f"{args.collective_timeout:g}"
    # A list names GPUs, and XLA strategies count cores themselves; otherwise tell the script what was started.
    exact = isinstance(args.devices, list) or args.accelerator in ("tpu", "xla")
    environment["FABRIC_KIT_DEVICES"] = format_devices(args.devices) if exact else str(processes)
    for name in ("accelerator", "strategy", "precision"):
        if getattr(args, name) is not None:
            environment[f"FABRIC_KIT_{name.upper()}"] = getattr(args, name)
    if "OMP_NUM_THREADS" not in os.environ:
        # torchrun would force 1 thread (and warn); share the cores between this machine's processes instead.
        environment["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // processes))
    return environment


@contextmanager
def _exported(variables: dict[str, str]) -> Iterator[None]:
    """Set variables for the child processes (torchrun copies ``os.environ``), then restore the whole environment,
    torchrun's own additions included, so that calling ``main`` from code leaves the caller's as it was."""
    saved = dict(os.environ)
    os.environ.update(variables)
    try:
        yield
    finally:
        for name in set(os.environ) - set(saved):
            del os.environ[name]
        os.environ.update(saved)


def _launch(arguments: list[str]) -> int:
    """Hand over to torch.distributed.run and turn its outcome into an exit status."""
    import torch.distributed.run as torchrun
    from torch.distributed import DistError
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous import RendezvousError

    try:
        torchrun.run(torchrun.parse_args(arguments))
    except ChildFailedError as failure:
        print(failure.format_msg(), file=sys.stderr)
        # torchrun's timestamps are whole seconds: a rank whose peer vanished often fails in the same one.
        first = min(failed.timestamp for failed in failure.failures.values())
        codes = {rank: failed.exitcode for rank, failed in failure.failures.items() if failed.timestamp == first}
        return exit_status(codes[root_cause(codes)]) or 1
    except SignalException as stop:
        return exit_status(-int(stop.sigval))
    except (DistError, RendezvousError) as error:
        # Before any process started: the store could not listen, or the nodes never met.
        address = arguments[arguments.index("--master-addr") + 1], arguments[arguments.index("--master-port") + 1]
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"fabric run: error: the rendezvous at {':'.join(address)} failed: {first_line}", file=sys.stderr)
        return 1
    return 0
