"""Per-step overhead over a raw PyTorch loop, side by side in one run: fabric_kit's Fabric and loops' Trainer, and
Lightning Fabric and Lightning's Trainer when lightning is installed.

A tiny CPU model (MLP 8-8-1, batch 8, one thread) makes framework overhead dominate. Each loop is built and run
from scratch for N and for 2N steps; the difference divided by N is its per-step cost, so set-up (building a
Trainer, wrapping the model) cancels. Two figures per loop:
- Python-level calls per step, counted with `sys.setprofile` ("call" and "c_call" events). Deterministic: the
  figure to hold.
- step time: the fastest of the interleaved rounds for N and for 2N steps, as `timeit` advises (other processes
  only ever add time; on a shared machine a median still carries their noise).
The Trainers run with progress bar, logger, checkpointing, model summary and sanity check off, a fair comparison
with the raw loop. Every loop's final weights are checked against the raw loop's.

    python benchmarks/overhead.py [--steps 200] [--rounds 7]
"""
from __future__ import annotations

import argparse
import gc
import logging
import sys
import time
import warnings
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

BATCH = 8
RAW = "raw PyTorch"
# (ours, anchor, target): our extra per-step cost must be at most `target` times the anchor's.
COMPARISONS = [("fabric_kit Fabric", "Lightning Fabric", 0.1), ("loops Trainer", "Lightning Trainer", 0.25)]

# A loop: runs `steps` training steps from scratch and returns the trained model.
Loop = Callable[[int], nn.Module]


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.01)


def make_loader(steps: int) -> DataLoader:
    generator = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(steps * BATCH, 8, generator=generator),
                         torch.randn(steps * BATCH, 1, generator=generator))
    return DataLoader(data, batch_size=BATCH)


def raw_loop(steps: int) -> nn.Module:
    model = make_model()
    optimizer = make_optimizer(model)
    for x, y in make_loader(steps):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
    return model


def fabric_loop(fabric_class: type) -> Loop:
    def run(steps: int) -> nn.Module:
        fabric = fabric_class(accelerator="cpu", devices=1)
        model = make_model()
        model, optimizer = fabric.setup(model, make_optimizer(model))
        for x, y in fabric.setup_dataloaders(make_loader(steps)):
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            fabric.backward(loss)
            optimizer.step()
        return model

    return run


def trainer_loop(trainer_class: type, module_class: type) -> Loop:
    """The same step as `raw_loop` written as a LightningModule, fitted by `trainer_class` for one epoch."""

    class Tiny(module_class):
        def __init__(self) -> None:
            super().__init__()
            self.model = make_model()

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
            x, y = batch
            return nn.functional.mse_loss(self.model(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return make_optimizer(self)

    def run(steps: int) -> nn.Module:
        module = Tiny()
        trainer = trainer_class(accelerator="cpu", devices=1, max_epochs=1, num_sanity_val_steps=0, logger=False,
                                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(module, make_loader(steps))
        return module.model

    return run


def count_calls(run: Callable[[], object]) -> int:
    """Python-level calls (functions and C functions) made while `run()` runs."""
    calls = 0

    def profiler(frame: object, event: str, arg: object) -> None:
        nonlocal calls
        if event == "call" or event == "c_call":
            calls += 1

    sys.setprofile(profiler)
    try:
        run()
    finally:
        sys.setprofile(None)
    return calls


def calls_per_step(loop: Loop, steps: int) -> float:
    """Calls of one step: the difference between runs of `2 * steps` and `steps` steps, divided by `steps`."""
    return (count_calls(lambda: loop(2 * steps)) - count_calls(lambda: loop(steps))) / steps


def run_seconds(loop: Loop, steps: int) -> float:
    """Wall time of one run, with the garbage collector off as `timeit` does: a collection of the whole heap (torch
    and lightning hold millions of objects) would land in one loop at random."""
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        loop(steps)
        return time.perf_counter() - start
    finally:
        gc.enable()


def candidates() -> dict[str, Loop]:
    import loops
    from fabric_kit import Fabric

    found: dict[str, Loop] = {RAW: raw_loop, "fabric_kit Fabric": fabric_loop(Fabric),
                              "loops Trainer": trainer_loop(loops.Trainer, loops.LightningModule)}
    try:
        import lightning
    except ImportError:
        print("lightning is not installed: Lightning Fabric and Trainer are left out", file=sys.stderr)
        return found
    for name in ("lightning.pytorch", "lightning.fabric"):  # their per-fit "GPU available" notices and tips
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="lightning")  # e.g. "consider more num_workers"
    found["Lightning Fabric"] = fabric_loop(lightning.Fabric)
    found["Lightning Trainer"] = trainer_loop(lightning.Trainer, lightning.LightningModule)
    return found


def measure(steps: int, rounds: int) -> dict[str, dict[str, float | bool]]:
    """Per loop: calls/step and µs/step, both also over the raw loop's, and whether the weights equal the raw
    loop's."""
    loops = candidates()
    for loop in loops.values():
        loop(2)  # one-time costs (lazy imports, caches) stay out of the figures
    calls = {name: calls_per_step(loop, steps) for name, loop in loops.items()}
    runs: dict[tuple[str, int], list[float]] = {(name, n): [] for name in loops for n in (steps, 2 * steps)}
    for _ in range(rounds):
        for name, loop in loops.items():
            for n in (steps, 2 * steps):
                runs[(name, n)].append(run_seconds(loop, n))
    micros = {name: (min(runs[(name, 2 * steps)]) - min(runs[(name, steps)])) / steps * 1e6 for name in loops}
    reference = raw_loop(steps).state_dict()
    results = {}
    for name, loop in loops.items():
        weights = loop(steps).state_dict()
        results[name] = {"calls": calls[name], "extra_calls": calls[name] - calls[RAW], "us": micros[name],
                         "extra_us": micros[name] - micros[RAW],
                         "weights_equal": all(torch.equal(reference[k], v) for k, v in weights.items())}
    return results


def ratios(results: dict[str, dict[str, float | bool]]) -> list[tuple[str, str, float, float, float]]:
    """(ours, anchor, extra-calls ratio, extra-time ratio, target) for each comparison whose anchor was measured."""
    return [(ours, anchor, results[ours]["extra_calls"] / results[anchor]["extra_calls"],
             results[ours]["extra_us"] / results[anchor]["extra_us"], target)
            for ours, anchor, target in COMPARISONS if anchor in results]


def table(results: dict[str, dict[str, float | bool]]) -> str:
    """The results as a Markdown table, then one line per comparison with its ratios and target."""
    lines = ["| loop | calls / step | extra calls | µs / step | extra µs | weights |",
             "| --- | ---: | ---: | ---: | ---: | --- |"]
    for name, r in results.items():
        extra_calls = "—" if name == RAW else f"{r['extra_calls']:+.1f}"
        extra_us = "—" if name == RAW else f"{r['extra_us']:+.1f}"
        same = "equal to raw" if r["weights_equal"] else "DIFFER"
        lines.append(f"| {name} | {r['calls']:.1f} | {extra_calls} | {r['us']:.1f} | {extra_us} | {same} |")
    lines.append("")
    for ours, anchor, call_ratio, time_ratio, target in ratios(results):
        verdict = "met" if max(call_ratio, time_ratio) <= target else "MISSED"
        lines.append(f"- {ours} / {anchor} extra cost: calls {call_ratio:.3f}×, time {time_ratio:.3f}× "
                     f"(target ≤ {target}×: {verdict})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200, help="N: each loop runs N and 2N steps (default 200)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (default 7)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(table(measure(args.steps, args.rounds)))


if __name__ == "__main__":
    main()
