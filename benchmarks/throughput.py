"""fabric_kit's `Throughput` / `ThroughputMonitor` (`fabric_kit.throughput`) next to Lightning Fabric's on the same
loop, in one CPU process: the figures they report and what they cost per step.

- Figures: one training loop of N steps feeds both monitors the same times and counts (batches, samples, items:
  the 8 features of each sample, FLOPs per batch from each library's `measure_flops` on the meta device) with the
  same peak (`--peak` FLOP/s: no table knows a CPU's), and prints what each computes, key by key; a plain
  `Throughput(world_size=2)` pair, fed alike, shows the global keys too. The two should agree to rounding.
- Cost per step of `update` + `compute_and_log` (every step), two ways:
  - Python calls per step in the loop of `overhead.py` (MLP 8-8-1, batch 8, one thread) over the same loop
    without a monitor, each run for N and 2N steps from scratch, the difference divided by N (deterministic);
  - µs per step of the two calls alone, 1000 steps in a row on a fresh monitor, the fastest of the interleaved
    rounds (timing the whole loop instead would bury a few µs in the noise of a shared machine).

    python benchmarks/throughput.py [--steps 200] [--rounds 7] [--peak 1e12]
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import overhead
import torch
from torch import nn

WINDOW = 20  # the monitors' window_size
CALLS = 1000  # steps per timing of `update` + `compute_and_log` alone
ITEMS = 8  # items per sample (its features): what `lengths` counts
BARE = "no monitor"
OURS, THEIRS = "fabric_kit ThroughputMonitor", "Lightning ThroughputMonitor"


def flops_per_batch(measure_flops: Callable[..., int]) -> int:
    """FLOPs of one training step's forward and backward of the benchmark's model, counted on the meta device."""
    with torch.device("meta"):
        model = overhead.make_model()
        x = torch.randn(overhead.BATCH, 8)
    return measure_flops(model, lambda: model(x), lambda y: y.sum())


def monitored_loop(make_monitor: Callable[[], Any] | None) -> overhead.Loop:
    """`overhead.py`'s raw loop; with a monitor, `update` and `compute_and_log` after every step."""

    def run(steps: int) -> nn.Module:
        model = overhead.make_model()
        optimizer = overhead.make_optimizer(model)
        monitor = None if make_monitor is None else make_monitor()
        start = time.perf_counter()
        for step, (x, y) in enumerate(overhead.make_loader(steps), 1):
            optimizer.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
            if monitor is not None:
                monitor.update(time=time.perf_counter() - start, batches=step, samples=step * overhead.BATCH)
                monitor.compute_and_log(step=step)
        return model

    return run


def lightning_parts() -> tuple[type, type, Callable[..., int]] | None:
    """Lightning Fabric's ThroughputMonitor, Throughput and measure_flops, or None without lightning."""
    try:
        from lightning.fabric.utilities.throughput import Throughput, ThroughputMonitor, measure_flops
    except ImportError:
        print("lightning is not installed: its monitor is left out", file=sys.stderr)
        return None
    return ThroughputMonitor, Throughput, measure_flops


def monitors(peak: float) -> dict[str, Callable[[], Any]]:
    """Each library's ThroughputMonitor on its own single-process CPU Fabric, with `peak` FLOP/s."""
    import fabric_kit
    from fabric_kit.throughput import ThroughputMonitor

    def ours() -> Any:
        return ThroughputMonitor(fabric_kit.Fabric(accelerator="cpu", devices=1), available_flops=peak,
                                 window_size=WINDOW)

    found = {OURS: ours}
    parts = lightning_parts()
    if parts is None:
        return found
    import lightning

    def theirs() -> Any:
        fabric = lightning.Fabric(accelerator="cpu", devices=1)
        fabric.launch()  # its monitor refuses a Fabric not launched
        monitor = parts[0](fabric, window_size=WINDOW)
        monitor.available_flops = peak  # it takes the peak from its table only
        return monitor

    found[THEIRS] = theirs
    return found


def figures(steps: int, peak: float) -> dict[str, dict[str, dict[str, float]]]:
    """What each library computes from the same loop, per monitor kind: {kind: {library: metrics}}."""
    from fabric_kit.throughput import Throughput, measure_flops

    parts = lightning_parts()
    flops = {OURS: flops_per_batch(measure_flops)}
    pairs: dict[str, dict[str, Any]] = {
        "ThroughputMonitor (1 process)": {OURS: monitors(peak)[OURS]()},
        "Throughput(world_size=2)": {OURS: Throughput(available_flops=peak, world_size=2, window_size=WINDOW)}}
    if parts is not None:
        flops[THEIRS] = flops_per_batch(parts[2])
        pairs["ThroughputMonitor (1 process)"][THEIRS] = monitors(peak)[THEIRS]()
        pairs["Throughput(world_size=2)"][THEIRS] = parts[1](available_flops=peak, world_size=2,
                                                             window_size=WINDOW)
    model = overhead.make_model()
    optimizer = overhead.make_optimizer(model)
    start = time.perf_counter()
    for step, (x, y) in enumerate(overhead.make_loader(steps), 1):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        elapsed = time.perf_counter() - start  # one reading for all: the monitors see the same time
        for pair in pairs.values():
            for library, monitor in pair.items():
                monitor.update(time=elapsed, batches=step, samples=step * overhead.BATCH,
                               lengths=step * overhead.BATCH * ITEMS, flops=flops[library])
    computed = {kind: {library: dict(monitor.compute()) for library, monitor in pair.items()}
                for kind, pair in pairs.items()}
    computed["measure_flops (per batch)"] = {library: {"flops": float(value)} for library, value in flops.items()}
    return computed


def figures_table(computed: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = [f"| monitor | key | {OURS.split()[0]} | Lightning | relative difference |",
             "| --- | --- | ---: | ---: | ---: |"]
    for kind, by_library in computed.items():
        ours, theirs = by_library[OURS], by_library.get(THEIRS, {})
        for key in sorted(set(ours) | set(theirs)):
            mine, other = ours.get(key), theirs.get(key)
            difference = "—" if mine is None or other is None else \
                f"{abs(mine - other) / max(abs(other), 1e-300):.1e}"
            lines.append(f"| {kind} | `{key}` | {'absent' if mine is None else f'{mine:.6g}'} | "
                         f"{'absent' if other is None else f'{other:.6g}'} | {difference} |")
    return "\n".join(lines)


def seconds_per_call(make_monitor: Callable[[], Any], calls: int = CALLS) -> float:
    """`update` + `compute_and_log` alone, `calls` steps in a row on a fresh monitor, per step, with the garbage
    collector off (as `timeit` does)."""
    monitor = make_monitor()
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        for step in range(1, calls + 1):
            monitor.update(time=step * 1e-3, batches=step, samples=step * overhead.BATCH)
            monitor.compute_and_log(step=step)
        return (time.perf_counter() - start) / calls
    finally:
        gc.enable()


def costs(steps: int, rounds: int, peak: float) -> dict[str, dict[str, float]]:
    """Per monitor: calls / step in the loop over the loop without one, and µs / step of its two calls alone."""
    makers = monitors(peak)
    loops = {BARE: monitored_loop(None), **{name: monitored_loop(make) for name, make in makers.items()}}
    for loop in loops.values():
        loop(2)  # one-time costs (lazy imports, caches) stay out of the figures
    calls = {name: overhead.calls_per_step(loop, steps) for name, loop in loops.items()}
    timed: dict[str, list[float]] = {name: [] for name in makers}
    for round_ in range(rounds):
        for name in makers if round_ % 2 == 0 else reversed(list(makers)):
            timed[name].append(seconds_per_call(makers[name]))
    return {name: {"calls": calls[name], "extra_calls": calls[name] - calls[BARE], "us": min(timed[name]) * 1e6,
                   "us_median": statistics.median(timed[name]) * 1e6} for name in makers}


def costs_table(results: dict[str, dict[str, float]]) -> str:
    lines = ["| monitor | extra calls / step in the loop | µs / step (fastest) | µs / step (median) |",
             "| --- | ---: | ---: | ---: |"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['extra_calls']:+.1f} | {r['us']:.2f} | {r['us_median']:.2f} |")
    if THEIRS in results:
        ours, theirs = results[OURS], results[THEIRS]
        lines += ["", f"- {OURS} / {THEIRS} cost per step: calls {ours['extra_calls'] / theirs['extra_calls']:.3f}×, "
                      f"time {ours['us'] / theirs['us']:.3f}× fastest, {ours['us_median'] / theirs['us_median']:.3f}× "
                      "median"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200, help=f"N: steps per run, >= {WINDOW} (default 200)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (default 7)")
    parser.add_argument("--peak", type=float, default=1e12, help="the peak FLOP/s both monitors get (default 1e12)")
    args = parser.parse_args(argv)
    if args.steps < WINDOW:
        parser.error(f"--steps {args.steps}: the rates need a full window of {WINDOW} steps")
    torch.set_num_threads(1)
    print(f"MLP 8-8-1, batch 8, one CPU thread; windows of {WINDOW} steps, peak {args.peak:.3g} FLOP/s given to "
          f"both; {args.steps} steps for the figures, {args.steps} and {2 * args.steps} for the calls, "
          f"{args.rounds} interleaved round(s) of {CALLS} steps for the time.\n")
    print("Figures from the same loop, times and counts:\n")
    print(figures_table(figures(args.steps, args.peak)))
    print("\nCost per step of `update` + `compute_and_log`:\n")
    print(costs_table(costs(args.steps, args.rounds, args.peak)))


if __name__ == "__main__":
    main()
