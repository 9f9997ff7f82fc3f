"""Gradient accumulation over windows of 4 micro-batches on 2 CPU processes (gloo, DDP), side by side in one launch:
fabric_kit's `fabric.accumulate` next to Lightning Fabric's `no_backward_sync` idiom, loops' Trainer next to
Lightning's Trainer with `accumulate_grad_batches=4`, and, for what skipping the sync saves, fabric_kit's Fabric
accumulating without it (every backward all-reduces).

Each loop trains an MLP (64-W-W-1, batch 16 per micro-batch and process, SGD, one thread per process) from
scratch. Two figures per loop:
- all-reduces per window: every gloo all-reduce that torch.profiler records on rank 0 in a run of 2N windows
  minus those in a run of N, divided by N, so set-up (building a Fabric or a Trainer, wrapping the model) cancels.
  Deterministic: the figure to hold. DDP all-reduces the gradients in buckets (its first one holds 1 MB), so a
  synced backward is B all-reduces (B is printed): B per window with the sync skipped, 4·B without. loops'
  Trainer adds the ranks' agreement on preemption, one small all-reduce every 10 batches (`fabric.preempted`).
- time per window on rank 0, from the end of the first window to the end of the last (after the optimizer step;
  in the Trainers from `on_train_batch_end`), so set-up stays out: the fastest and the median of the interleaved
  rounds of N windows (the ranks wait for each other in every all-reduce, so rank 0's time is the job's).
Every loop's final weights are compared with those of `fabric.accumulate`'s loop. Lightning's Trainer ends
elsewhere: under DDP it always shuffles the training data (its DistributedSampler gets shuffle=True, whatever the
loader's sampler), so it trains on another order of the same samples, at the same cost.

    python benchmarks/accumulation.py [--windows 20] [--rounds 5] [--width 512]
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WINDOW, BATCH, FEATURES, LR = 4, 16, 64, 0.01
ACCUMULATE = "fabric_kit Fabric"
NO_SKIP = "fabric_kit Fabric, no skip"
# (ours, anchor): the rows whose time ratio is printed.
COMPARISONS = [(ACCUMULATE, "Lightning Fabric"), ("loops Trainer", "Lightning Trainer")]
# A loop: trains for `windows` windows from scratch; returns the model and the time at each window's end.
Loop = Callable[[int], tuple[Any, list[float]]]
IDIOMS = {ACCUMULATE: "`fabric.accumulate(model, loader, window=4)`",
          "Lightning Fabric": "`fabric.no_backward_sync(model, enabled=...)`",
          NO_SKIP: "loss / 4, every backward syncs",
          "loops Trainer": "`Trainer(accumulate_grad_batches=4)`",
          "Lightning Trainer": "`Trainer(accumulate_grad_batches=4)`"}


def make_model(width: int):  # -> nn.Module; torch is imported in the worker processes only
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(FEATURES, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, 1))


def make_loader(windows: int, world_size: int):
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    samples = windows * WINDOW * BATCH * world_size
    generator = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(samples, FEATURES, generator=generator), torch.randn(samples, 1,
                                                                                          generator=generator))
    return DataLoader(data, batch_size=BATCH)


def fabric_loops(width: int, lightning_fabric: type | None) -> dict[str, Loop]:
    """The Fabric loops (Lightning Fabric's with its class): `run(windows)` trains from scratch and returns the
    model."""
    import torch
    from torch import nn

    from fabric_kit import Fabric

    def set_up(fabric_class: type, windows: int):
        fabric = fabric_class(accelerator="cpu", devices=2, strategy="ddp")
        fabric.launch()
        model = make_model(width)
        model, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=LR))
        return fabric, model, optimizer, fabric.setup_dataloaders(make_loader(windows, fabric.world_size))

    def accumulate(windows: int):
        fabric, model, optimizer, loader = set_up(Fabric, windows)
        stamps = []
        for micro, (x, y) in fabric.accumulate(model, loader, window=WINDOW):
            with micro:
                fabric.backward(micro.scale(nn.functional.mse_loss(model(x), y)))
            if micro.is_last:
                optimizer.step()
                optimizer.zero_grad()
                stamps.append(time.perf_counter())
        return model, stamps

    def no_skip(windows: int):
        fabric, model, optimizer, loader = set_up(Fabric, windows)
        stamps = []
        for index, (x, y) in enumerate(loader):
            fabric.backward(nn.functional.mse_loss(model(x), y) / WINDOW)
            if (index + 1) % WINDOW == 0:
                optimizer.step()
                optimizer.zero_grad()
                stamps.append(time.perf_counter())
        return model, stamps

    if lightning_fabric is None:
        return {ACCUMULATE: accumulate, NO_SKIP: no_skip}

    def no_backward_sync(windows: int):  # Lightning's documented idiom
        fabric, model, optimizer, loader = set_up(lightning_fabric, windows)
        stamps = []
        for index, (x, y) in enumerate(loader):
            accumulating = (index + 1) % WINDOW != 0
            with fabric.no_backward_sync(model, enabled=accumulating):
                fabric.backward(nn.functional.mse_loss(model(x), y) / WINDOW)
            if not accumulating:
                optimizer.step()
                optimizer.zero_grad()
                stamps.append(time.perf_counter())
        return model, stamps

    return {ACCUMULATE: accumulate, "Lightning Fabric": no_backward_sync, NO_SKIP: no_skip}


def trainer_loop(trainer_class: type, module_class: type, width: int) -> Loop:
    """The same step as a LightningModule, fitted by `trainer_class` for one epoch with accumulate_grad_batches."""
    import torch
    from torch import nn

    class Regression(module_class):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.model = make_model(width)
            self.stamps: list[float] = []

        def on_train_batch_end(self, outputs, batch, batch_idx):
            if (batch_idx + 1) % WINDOW == 0:  # the window's optimizer step ran
                self.stamps.append(time.perf_counter())

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.mse_loss(self.model(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=LR)

    def run(windows: int):
        module = Regression()
        trainer = trainer_class(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1,
                                accumulate_grad_batches=WINDOW, num_sanity_val_steps=0, logger=False,
                                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(module, make_loader(windows, 2))
        return module.model, module.stamps

    return run


def candidates(width: int) -> dict[str, Loop]:
    import loops

    try:
        import lightning
    except ImportError:
        print("lightning is not installed: Lightning Fabric and Trainer are left out", file=sys.stderr)
        found = fabric_loops(width, None)
        found["loops Trainer"] = trainer_loop(loops.Trainer, loops.LightningModule, width)
        return found
    found = fabric_loops(width, lightning.Fabric)
    found["loops Trainer"] = trainer_loop(loops.Trainer, loops.LightningModule, width)
    for name in ("lightning.pytorch", "lightning.fabric"):  # their per-fit notices and tips
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="lightning")  # e.g. "consider more num_workers"
    found["Lightning Trainer"] = trainer_loop(lightning.Trainer, lightning.LightningModule, width)
    return found


def count_all_reduces(run: Callable[[], object]) -> int:
    """The gloo all-reduces this process runs while `run()` runs, as torch.profiler records them."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as recorded:
        run()
    return sum(event.name == "gloo:all_reduce" for event in recorded.events())


def buckets_per_sync(width: int) -> int:
    """The all-reduces of one synced backward of the model under plain DDP (its second: DDP may rebuild its buckets
    after the first)."""
    import torch
    from torch.nn.parallel import DistributedDataParallel

    model = DistributedDataParallel(make_model(width))
    x = torch.randn(BATCH, FEATURES)
    model(x).sum().backward()
    return count_all_reduces(lambda: model(x).sum().backward())


def seconds_per_window(run: Callable[[], tuple[Any, list[float]]]) -> tuple[float, dict[str, Any]]:
    """From the end of `run()`'s first window to the end of its last, per window, with the garbage collector off
    (as `timeit` does: a collection of the whole heap would land in one loop at random); and the final weights."""
    gc.collect()
    gc.disable()
    try:
        model, stamps = run()
    finally:
        gc.enable()
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1), model.state_dict()


def worker(windows: int, rounds: int, width: int) -> None:
    """Run inside each of the 2 processes; rank 0 prints the figures as one JSON line."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    found = candidates(width)
    for run in found.values():
        run(1)  # one-time costs (lazy imports, caches) stay out of the figures
    reduces = {name: (count_all_reduces(lambda run=run: run(2 * windows)) - count_all_reduces(lambda run=run:
                                                                                               run(windows)))
               / windows for name, run in found.items()}
    times: dict[str, list[float]] = {name: [] for name in found}
    weights = {}  # each loop's final weights, from its last timed run
    for round_ in range(rounds):
        for name in found if round_ % 2 == 0 else reversed(list(found)):
            dist.barrier()
            seconds, weights[name] = seconds_per_window(lambda name=name: found[name](windows))
            times[name].append(seconds)
    reference = weights[ACCUMULATE]
    results = {}
    for name in found:
        results[name] = {
            "all_reduces": reduces[name], "ms": min(times[name]) * 1e3,
            "ms_median": statistics.median(times[name]) * 1e3,
            "max_diff": max(float((reference[key] - value).abs().max()) for key, value in weights[name].items())}
    buckets = buckets_per_sync(width)
    if dist.get_rank() == 0:
        print(json.dumps({"buckets": buckets, "loops": results}))
    dist.barrier()
    dist.destroy_process_group()


def launch(windows: int, rounds: int, width: int) -> dict[str, Any]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", __file__,
               "--worker", "--windows", str(windows), "--rounds", str(rounds), "--width", str(width)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FABRIC_KIT_", "TORCHELASTIC_", "SLURM_"))}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p))
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"the 2-process run failed (exit status {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("{")))


def table(measured: dict[str, Any], windows: int, rounds: int, width: int) -> str:
    results: dict[str, dict[str, float]] = measured["loops"]
    lines = [f"MLP {FEATURES}-{width}-{width}-1, windows of {WINDOW} micro-batches of {BATCH} samples per process, "
             f"2 CPU processes (gloo, DDP), one thread each; {windows} windows per timed run, {rounds} "
             f"interleaved round(s). DDP all-reduces this model's gradients in B = {measured['buckets']} "
             f"bucket(s): a window costs B all-reduces with the sync skipped, {WINDOW}·B = "
             f"{WINDOW * measured['buckets']} without.", "",
             "| loop | accumulation | all-reduces / window | ms / window (fastest) | ms / window (median) "
             "| max \\|Δ weight\\| |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for name, r in results.items():
        difference = "—" if name == ACCUMULATE else f"{r['max_diff']:.1e}"
        lines.append(f"| {name} | {IDIOMS[name]} | {r['all_reduces']:.2f} | {r['ms']:.2f} | {r['ms_median']:.2f} "
                     f"| {difference} |")
    lines.append("")
    for ours, anchor in [*COMPARISONS, (ACCUMULATE, NO_SKIP)]:
        if anchor in results:
            lines.append(f"- {ours} / {anchor}: time per window {results[ours]['ms'] / results[anchor]['ms']:.3f}× "
                         f"fastest, {results[ours]['ms_median'] / results[anchor]['ms_median']:.3f}× median; "
                         f"all-reduces per window {results[ours]['all_reduces']:.2f} vs "
                         f"{results[anchor]['all_reduces']:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=20, help="N: windows per run, >= 2 (default 20)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (default 5)")
    parser.add_argument("--width", type=int, default=512, help="hidden width of the MLP (default 512)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.windows < 2:
        parser.error(f"--windows {args.windows}: the time per window needs at least 2 windows")
    if args.worker:
        worker(args.windows, args.rounds, args.width)
        return
    print(table(launch(args.windows, args.rounds, args.width), args.windows, args.rounds, args.width))


if __name__ == "__main__":
    main()
