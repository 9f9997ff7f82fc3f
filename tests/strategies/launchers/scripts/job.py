"""A 2-rank job for the launcher tests: a few steps with one all_reduce each, during which rank RANK misbehaves.

    python job.py OUT LAUNCH BEHAVIOUR RANK [--collective-timeout SECONDS]

LAUNCH: "ddp" (`python job.py` starts rank 1 itself), "ddp_spawn", "ddp_fork", or "external" (`fabric run` or
torchrun started the ranks). BEHAVIOUR, of rank RANK at step 3 while the others go on into that step's collective:
- raise: RuntimeError; exit: sys.exit(3); kill: SIGKILL itself;
- sleep: stops taking part (sleeps for a minute); mismatch: calls broadcast where the others call all_reduce;
- sleep_before_backward: a DDP step, the rank sleeps before `fabric.backward`, so the others wait in DDP's
  gradient all-reduce;
- preempt: every rank trains until `fabric.preempted` (RANK unused), writes OUT/saved<rank> (the step), stops;
  with --requeue, rank 0 then requeues the SLURM job; ignore_preemption: reads `fabric.preempted`, never stops;
- count: every rank counts the Python calls per step of a loop without collectives and of one with an all_reduce
  per step, with the collective watchdog running and after stopping it, into OUT/calls<rank>.json;
- none: every rank finishes, writing OUT/environ<rank>.json (the launch variables it runs with), and the launching
  process writes OUT/environ_after.json (those left in its environment after the run).
Every process of the job appends its pid to OUT/pids; a failing rank writes OUT/failed_at (time.time()) first;
rank 0 writes OUT/step<n> as it starts step n.
"""
import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import torch
from torch import nn

from fabric_kit import Fabric
from fabric_kit.environments.slurm import requeue_job

STEPS = 6
FAULTY_STEP = 3
MISBEHAVIOURS = ("raise", "exit", "kill", "sleep", "mismatch", "sleep_before_backward")


def record_pid(out: Path) -> None:
    with open(out / "pids", "a") as pids:
        pids.write(f"{os.getpid()}\n")


LAUNCH_VARIABLES = ("LOCAL_WORLD_SIZE", "WORLD_SIZE", "LOCAL_RANK", "RANK")


def record_environment(out: Path, name: str) -> None:
    (out / f"environ{name}.json").write_text(json.dumps({v: os.environ.get(v) for v in LAUNCH_VARIABLES}))


def train(fabric: Fabric, out: Path, behaviour: str, faulty: int, requeue: bool = False) -> None:
    record_pid(out)
    if behaviour == "none":
        record_environment(out, str(fabric.global_rank))
    if behaviour == "count":
        return count_calls(fabric, out)
    model = fabric.setup(nn.Linear(4, 1)) if behaviour == "sleep_before_backward" else None
    steps = 10_000 if behaviour in ("preempt", "ignore_preemption") else STEPS
    for step in range(steps):
        if fabric.global_rank == 0:
            (out / f"step{step}").touch()
        if step == FAULTY_STEP and fabric.global_rank == faulty and behaviour in MISBEHAVIOURS:
            (out / "failed_at").write_text(repr(time.time()))
            misbehave(fabric, behaviour)
        if model is not None:
            fabric.backward(model(torch.ones(2, 4)).sum())
        else:
            fabric.all_reduce(torch.tensor(1.0))  # the others wait here for the faulty rank
        if behaviour in ("preempt", "ignore_preemption"):
            time.sleep(0.05)
            if fabric.preempted and behaviour == "preempt":
                (out / f"saved{fabric.global_rank}").write_text(str(step))
                if requeue and fabric.is_global_zero:
                    requeue_job()
                return


def count_calls(fabric: Fabric, out: Path) -> None:
    from benchmarks.overhead import calls_per_step
    from fabric_kit import watchdog

    def loop(collective: bool):
        def run(steps: int) -> nn.Module:
            model = nn.Linear(4, 1)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            data = torch.utils.data.TensorDataset(torch.randn(steps * 2 * 8, 4))
            for (x,) in fabric.setup_dataloaders(torch.utils.data.DataLoader(data, batch_size=8)):
                optimizer.zero_grad()
                loss = model(x).sum()
                loss.backward()
                optimizer.step()
                if collective:
                    fabric.all_reduce(loss.detach())
            return model
        return run

    counts = {}
    for watching in (True, False):
        loops = {"plain": loop(False), "all_reduce": loop(True)}
        for run in loops.values():
            run(2)  # one-time costs stay out of the count
        counts["on" if watching else "off"] = {name: calls_per_step(run, 20) for name, run in loops.items()}
        fabric.barrier()
        watchdog.stop()
    (out / f"calls{fabric.global_rank}.json").write_text(json.dumps(counts))


def misbehave(fabric: Fabric, behaviour: str) -> None:
    if behaviour == "raise":
        raise RuntimeError(f"rank {fabric.global_rank} fails on purpose")
    if behaviour == "exit":
        sys.exit(3)
    if behaviour == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if behaviour in ("sleep", "sleep_before_backward"):
        time.sleep(60)
    if behaviour == "mismatch":
        fabric.broadcast("where the others all_reduce")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("launch", choices=["ddp", "ddp_spawn", "ddp_fork", "external"])
    parser.add_argument("behaviour", choices=[*MISBEHAVIOURS, "preempt", "ignore_preemption", "count", "none"])
    parser.add_argument("rank", type=int)
    parser.add_argument("--collective-timeout", type=float)
    parser.add_argument("--requeue", action="store_true")
    args = parser.parse_args()
    settings = {} if args.collective_timeout is None else {"collective_timeout": args.collective_timeout}
    if args.launch == "external":
        fabric = Fabric(accelerator="cpu", **settings)
    else:
        fabric = Fabric(accelerator="cpu", devices=2, strategy=args.launch, **settings)
    if args.launch in ("ddp_spawn", "ddp_fork"):
        record_pid(args.out)  # the launching process is no rank, but part of the job
        fabric.launch(train, args.out, args.behaviour, args.rank, args.requeue)
    else:
        fabric.launch()
        train(fabric, args.out, args.behaviour, args.rank, args.requeue)
    if args.behaviour == "none" and fabric.global_rank == 0:
        record_environment(args.out, "_after")


if __name__ == "__main__":
    main()
