"""Exact resume, shown end to end: train once without interruption; train again, SIGKILL the run mid-epoch and
start it again so it resumes from its latest checkpoint; the two final models are bit-identical.

    python examples/fabric/kill_and_resume.py                  # 1 process
    python examples/fabric/kill_and_resume.py --devices 2      # 2 DDP processes (each rank is killed)
    python examples/fabric/kill_and_resume.py --steps 20       # quicker

The training run is this same file with `--train`: a model with dropout, AdamW, a step LR schedule and a shuffled
loader, checkpointed every `--save-every` steps. The checkpoint holds the loader too, so the resumed run continues
with the next batch of the same shuffled epoch, with the same random state for dropout.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fabric_kit import Fabric
from fabric_kit.checkpoint import latest_checkpoint


def train(args: argparse.Namespace) -> None:
    fabric = Fabric(accelerator="cpu", devices=args.devices)
    fabric.launch()
    fabric.seed_everything(42)

    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(320, 16, generator=generator), torch.randn(320, 1, generator=generator))
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model, optimizer = fabric.setup(model, optimizer)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.8)
    loader = fabric.setup_dataloaders(DataLoader(data, batch_size=16, shuffle=True))

    state = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "loader": loader, "step": 0}
    checkpoints = Path(args.run_dir) / "checkpoints"
    latest = latest_checkpoint(checkpoints)
    if latest is not None:
        fabric.load(latest, state)
        fabric.print(f"resumed from {latest.name} at step {state['step']}")

    while state["step"] < args.steps:
        for x, y in loader:
            optimizer.zero_grad()
            fabric.backward(nn.functional.mse_loss(model(x), y))
            optimizer.step()
            scheduler.step()
            state["step"] += 1
            if state["step"] % args.save_every == 0:
                fabric.save(checkpoints / f"step-{state['step']:05d}.ckpt", state)
            if state["step"] == args.kill_at:
                fabric.print(f"killing the run at step {args.kill_at}")
                os.kill(os.getpid(), signal.SIGKILL)
            if state["step"] == args.steps:
                break
    if fabric.is_global_zero:
        torch.save(model.state_dict(), Path(args.run_dir) / "final.pt")


def run(args: argparse.Namespace, run_dir: Path, kill_at: int = -1) -> int:
    """Run `--train` in a fresh interpreter, as a user would from the shell; returns its exit status."""
    command = [sys.executable, __file__, "--train", "--run-dir", str(run_dir), "--steps", str(args.steps),
               "--save-every", str(args.save_every), "--devices", str(args.devices), "--kill-at", str(kill_at)]
    return subprocess.run(command).returncode


def demonstrate(args: argparse.Namespace) -> None:
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    kill_at = args.steps // 2 + 1  # between two checkpoints: the resumed run redoes a few steps
    print(f"1. uninterrupted run of {args.steps} steps")
    if run(args, out / "uninterrupted") != 0:
        sys.exit("the uninterrupted run failed")
    print(f"2. the same run, killed at step {kill_at}")
    status = run(args, out / "interrupted", kill_at)
    if status == 0:
        sys.exit(f"the run was not killed at step {kill_at}")
    print(f"   exit status {status}; started again:")
    if run(args, out / "interrupted") != 0:
        sys.exit("the resumed run failed")
    expected = torch.load(out / "uninterrupted" / "final.pt")
    resumed = torch.load(out / "interrupted" / "final.pt")
    identical = all(torch.equal(expected[name], resumed[name]) for name in expected)
    print(f"3. final weights bit-identical: {identical} (runs and checkpoints under {out.resolve()})")
    if not identical:
        sys.exit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60, help="training steps of each run (default 60)")
    parser.add_argument("--save-every", type=int, default=5, help="checkpoint every N steps (default 5)")
    parser.add_argument("--devices", type=int, default=1, help="CPU processes per run (default 1)")
    parser.add_argument("--out", default="runs/kill_and_resume", help="where the runs write (default %(default)s)")
    parser.add_argument("--train", action="store_true", help="be one training run (what the demonstration starts)")
    parser.add_argument("--run-dir", help="with --train: the run's folder")
    parser.add_argument("--kill-at", type=int, default=-1, help="with --train: SIGKILL every rank at this step")
    args = parser.parse_args()
    if args.steps < 2 or args.save_every < 1 or args.save_every >= args.steps:
        parser.error(f"need --steps >= 2 and 1 <= --save-every < --steps; got {args.steps} and {args.save_every}")
    train(args) if args.train else demonstrate(args)


if __name__ == "__main__":
    main()
