"""Throughput of 1 and 2 processes on a compute-bound model: fabric_kit's Fabric under `fabric run` next to raw
PyTorch DDP under torchrun (`DistributedDataParallel`, gloo on CPU, nccl on CUDA).

Each process trains an MLP (512-2048-2048-10) on a fixed batch of 64 samples (weak scaling: the global batch grows
with the processes), one thread per process. Only the steps are timed, between two barriers after a warm-up, so
start-up and import costs stay out. Scaling efficiency is the 2-process throughput over twice the 1-process one;
the last column is Fabric's throughput over raw DDP's at the same process count.

    python benchmarks/ddp_scaling.py [--steps 20] [--rounds 1]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BATCH, WIDTH, FEATURES, CLASSES = 64, 2048, 512, 10
WARMUP = 3


def make_model():
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(FEATURES, WIDTH), nn.ReLU(), nn.Linear(WIDTH, WIDTH), nn.ReLU(),
                         nn.Linear(WIDTH, CLASSES))


def timed_steps(step, barrier, steps: int) -> float:
    for _ in range(WARMUP):
        step()
    barrier()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    barrier()
    return time.perf_counter() - start


def raw_worker(steps: int) -> tuple[int, int, float]:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    model = DistributedDataParallel(make_model().to(device), device_ids=[device.index] if cuda else None)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.randn(BATCH, FEATURES, device=device), torch.randint(0, CLASSES, (BATCH,), device=device)

    def step() -> None:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    def barrier() -> None:
        if cuda:
            torch.cuda.synchronize()
        dist.barrier()

    seconds = timed_steps(step, barrier, steps)
    rank, world = dist.get_rank(), dist.get_world_size()
    dist.destroy_process_group()
    return rank, world, seconds


def fabric_worker(steps: int) -> tuple[int, int, float]:
    import torch

    from fabric_kit import Fabric

    fabric = Fabric()
    fabric.launch()
    model = make_model()
    model, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=1e-3))
    x = torch.randn(BATCH, FEATURES, device=fabric.device)
    y = torch.randint(0, CLASSES, (BATCH,), device=fabric.device)

    def step() -> None:
        optimizer.zero_grad()
        fabric.backward(torch.nn.functional.cross_entropy(model(x), y))
        optimizer.step()

    def barrier() -> None:
        if fabric.device.type == "cuda":
            torch.cuda.synchronize()
        fabric.barrier()

    return fabric.global_rank, fabric.world_size, timed_steps(step, barrier, steps)


def worker(kind: str, steps: int) -> float | None:
    """This process's part of one run of `kind`: the samples per second of all its processes, on rank 0 (None on
    the others)."""
    rank, world, seconds = (raw_worker if kind == "raw" else fabric_worker)(steps)
    return world * BATCH * steps / seconds if rank == 0 else None


def launch(kind: str, processes: int, steps: int) -> float:
    """Samples per second of one run, as reported by its rank 0."""
    worker = [__file__, "--worker", kind, "--steps", str(steps)]
    if kind == "raw":
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    else:
        command = [sys.executable, "-m", "fabric_kit", "run", "--devices", str(processes)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FABRIC_KIT_", "TORCHELASTIC_", "SLURM_"))}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p))
    proc = subprocess.run([*command, *worker], cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} on {processes} process(es) failed:\n{proc.stdout}\n{proc.stderr}")
    line = next(line for line in proc.stdout.splitlines() if line.startswith("{"))
    return json.loads(line)["samples_per_second"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run (default 20)")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds, median taken (default 1)")
    parser.add_argument("--worker", choices=["raw", "fabric"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        rate = worker(args.worker, args.steps)
        if rate is not None:
            print(json.dumps({"samples_per_second": rate}))
        return

    cases = [(kind, processes) for processes in (1, 2) for kind in ("raw", "fabric")]
    samples: dict[tuple[str, int], list[float]] = {case: [] for case in cases}
    for round_ in range(args.rounds):
        for case in cases if round_ % 2 == 0 else reversed(cases):
            samples[case].append(launch(*case, args.steps))
    rate = {case: statistics.median(values) for case, values in samples.items()}

    print(f"MLP {FEATURES}-{WIDTH}-{WIDTH}-{CLASSES}, batch {BATCH} per process, {args.steps} timed steps, "
          f"median of {args.rounds} round(s)\n")
    print("| loop | processes | samples / s | scaling efficiency | Fabric / raw |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for kind, processes in cases:
        efficiency = rate[(kind, 2)] / (2 * rate[(kind, 1)]) if processes == 2 else 1.0
        versus = f"{rate[('fabric', processes)] / rate[('raw', processes)]:.3f}" if kind == "fabric" else "—"
        name = "raw DDP (torchrun)" if kind == "raw" else "fabric_kit (fabric run)"
        print(f"| {name} | {processes} | {rate[(kind, processes)]:.0f} | {efficiency:.2f} | {versus} |")


if __name__ == "__main__":
    main()
