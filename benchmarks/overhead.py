"""Per-step overhead of fabric_kit over a raw PyTorch loop, side by side in one run.

Two figures per loop, on a tiny CPU model (MLP 8-8-1, batch 8, one thread) so that framework overhead dominates:
- Python-level calls per step, counted with `sys.setprofile` ("call" and "c_call" events) inside the loop only.
  Deterministic: this is the figure to hold.
- median step time over interleaved rounds (noisy on shared machines).
Lightning Fabric is measured too when it is installed. Final weights of every loop are checked against the raw
loop's.

    python benchmarks/overhead.py [--steps 200] [--rounds 7]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

BATCH = 8


def make_model() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
    return model, torch.optim.SGD(model.parameters(), lr=0.01)


def make_loader(steps: int) -> DataLoader:
    generator = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(steps * BATCH, 8, generator=generator),
                         torch.randn(steps * BATCH, 1, generator=generator))
    return DataLoader(data, batch_size=BATCH)


def raw_loop(steps: int) -> tuple[Callable[[], None], nn.Module]:
    model, optimizer = make_model()
    loader = make_loader(steps)

    def epoch() -> None:
        for x, y in loader:
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            optimizer.step()

    return epoch, model


def fabric_loop(fabric_class: type, steps: int) -> tuple[Callable[[], None], nn.Module]:
    fabric = fabric_class(accelerator="cpu", devices=1)
    model, optimizer = make_model()
    model, optimizer = fabric.setup(model, optimizer)
    loader = fabric.setup_dataloaders(make_loader(steps))

    def epoch() -> None:
        for x, y in loader:
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            fabric.backward(loss)
            optimizer.step()

    return epoch, model


def count_calls(epoch: Callable[[], None], steps: int) -> float:
    calls = 0

    def profiler(frame: object, event: str, arg: object) -> None:
        nonlocal calls
        if event == "call" or event == "c_call":
            calls += 1

    sys.setprofile(profiler)
    try:
        epoch()
    finally:
        sys.setprofile(None)
    return calls / steps


def candidates(steps: int) -> dict[str, tuple[Callable[[], None], nn.Module]]:
    from fabric_kit import Fabric

    loops = {"raw PyTorch": raw_loop(steps), "fabric_kit Fabric": fabric_loop(Fabric, steps)}
    try:
        from lightning.fabric import Fabric as LightningFabric
    except ImportError:
        print("lightning is not installed: Lightning Fabric is left out", file=sys.stderr)
    else:
        loops["Lightning Fabric"] = fabric_loop(LightningFabric, steps)
    return loops


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200, help="steps per epoch (default 200)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (default 7)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    loops = candidates(args.steps)
    calls = {name: count_calls(epoch, args.steps) for name, (epoch, _) in loops.items()}
    times: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(args.rounds):
        for name, (epoch, _) in loops.items():
            start = time.perf_counter()
            epoch()
            times[name].append((time.perf_counter() - start) / args.steps)

    reference = loops["raw PyTorch"][1].state_dict()
    raw_calls, raw_time = calls["raw PyTorch"], statistics.median(times["raw PyTorch"])
    print(f"{'loop':<20} {'calls/step':>10} {'extra':>7} {'median µs/step':>15} {'extra µs':>9} {'weights':>8}")
    extra = {}
    for name, (_, model) in loops.items():
        median = statistics.median(times[name])
        extra[name] = (calls[name] - raw_calls, (median - raw_time) * 1e6)
        same = all(torch.equal(reference[k], v) for k, v in model.state_dict().items())
        print(f"{name:<20} {calls[name]:>10.1f} {extra[name][0]:>+7.1f} {median * 1e6:>15.1f} "
              f"{extra[name][1]:>+9.1f} {'equal' if same else 'DIFFER':>8}")
    if "Lightning Fabric" in extra:
        ours, theirs = extra["fabric_kit Fabric"], extra["Lightning Fabric"]
        print(f"\nfabric_kit's extra calls / Lightning Fabric's: {ours[0] / theirs[0]:.3f} (target <= 0.2)")
        print(f"fabric_kit's extra time  / Lightning Fabric's: {ours[1] / theirs[1]:.3f} (target <= 0.25)")


if __name__ == "__main__":
    main()
