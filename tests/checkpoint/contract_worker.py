"""The scenario behind test_contract.py: fabric_kit's one checkpoint contract, exercised the same way under each
strategy.

    python contract_worker.py OUT_DIR CASE [CASE ...]

The cases run one after the other in the same processes, since process start-up dominates the cost. Cases of 2
processes that re-run the script ("ddp", "fsdp_*", "deepspeed_*") share the ranks the first one starts (later
Fabrics join its process group); "ddp_spawn" and "ddp_fork" start their own ranks from this process, so they are
listed only with cases of one process. Each rank saves what it observed to OUT_DIR/<case>/rank<r>.pt.

Every case: train a few steps with dropout and a shuffled `setup_dataloaders` loader, save mid-epoch, continue (the
reference); then rebuild everything from other seeds, load, continue again. The test compares the two
continuations (random draws, the loader's next samples, the losses, which depend on the weights, the optimizer
state and the dropout masks) and checks the precision state, strict and non-strict loading, and the refusal of
unpickled objects under the default `weights_only=True`.
"""
import functools
import os
import random
import sys
import traceback
from fractions import Fraction

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fabric_kit import Fabric, seed_everything
from fabric_kit.strategies.fsdp import FSDPStrategy
from fabric_kit.strategies.registry import strategy_class

SCALE_AT_SAVE = 512.0
"""The fp16 loss scale set just before saving (GradScaler starts at 65536): it must come back on load."""
PRECISION_MARKER = 7
"""An entry added to the precision's state, so the plumbing is seen where the precision itself has no state."""


def _fsdp(**kwargs):
    return lambda: FSDPStrategy(**kwargs)


def _cpu_stepped(name):
    """The ZeRO offload preset `name`, stepping the test's torch AdamW on the CPU. DeepSpeed asks for its own CPU
    Adam there, a C++ op it compiles on first use (minutes on a 2-core machine, in every fresh environment); its
    `zero_force_ds_cpu_optimizer: false` takes a torch optimizer instead. The partitioning, the offloaded optimizer
    state and the checkpoint files are the preset's either way."""
    def build():
        cls, preset = strategy_class(name)
        return cls(**preset, config={"zero_force_ds_cpu_optimizer": False})
    return build


CASES = {
    # name: (strategy: a registered name or a factory, devices, precision)
    "single_device": ("single_device", 1, "16-mixed"),
    "ddp": ("ddp", 2, "16-mixed"),
    "ddp_spawn": ("ddp_spawn", 2, "16-mixed"),
    "ddp_fork": ("ddp_fork", 2, "16-mixed"),
    "fsdp_sharded": (_fsdp(state_dict_type="sharded"), 2, "16-mixed"),
    "fsdp_full": (_fsdp(state_dict_type="full"), 2, "16-mixed"),
    "fsdp_cpu_offload": ("fsdp_cpu_offload", 2, "32-true"),
    "deepspeed_stage_1": ("deepspeed_stage_1", 2, "32-true"),
    "deepspeed_stage_2": ("deepspeed_stage_2", 2, "32-true"),
    "deepspeed_stage_3": ("deepspeed_stage_3", 2, "32-true"),
    "deepspeed_stage_2_offload": (_cpu_stepped("deepspeed_stage_2_offload"), 2, "32-true"),
    "deepspeed_stage_3_offload": (_cpu_stepped("deepspeed_stage_3_offload"), 2, "32-true"),
}
SPAWNING = ("ddp_spawn", "ddp_fork")


class Indexed(Dataset):
    """Samples that say which index they are, so the test sees where a loader resumes."""

    def __init__(self, n=32):
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=generator)
        self.y = self.x.sum(1, keepdim=True)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, index):
        return index, self.x[index], self.y[index]


def build(fabric, seed):
    """Model, optimizer and loader, from `seed`; then a different RNG stream on every rank."""
    seed_everything(seed)  # also the loader's shuffle seed, which must agree over ranks
    model = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.5), nn.Linear(16, 1))
    if fabric.setup_module_first:
        model = fabric.setup_module(model)
        optimizer = fabric.setup_optimizers(torch.optim.AdamW(model.parameters(), lr=1e-2))
    else:
        model, optimizer = fabric.setup(model, torch.optim.AdamW(model.parameters(), lr=1e-2))
    loader = fabric.setup_dataloaders(DataLoader(Indexed(), batch_size=2, shuffle=True))
    random.seed(seed + 100 * fabric.global_rank + 1)
    np.random.seed(seed + 100 * fabric.global_rank + 2)
    torch.manual_seed(seed + 100 * fabric.global_rank + 3)
    return model, optimizer, loader


def train(fabric, model, optimizer, batches, steps):
    seen, losses = [], []
    for _ in range(steps):
        index, x, y = next(batches)
        loss = nn.functional.mse_loss(model(x), y)
        fabric.backward(loss, model=model)
        optimizer.step()
        optimizer.zero_grad()
        seen.append(index.tolist())
        losses.append(loss.item())
    return seen, losses


def continuation(fabric, model, optimizer, batches):
    """What a resumed run must reproduce bit for bit."""
    draws = (random.random(), float(np.random.rand()), torch.rand(2).tolist())
    scale = _scale(fabric)
    seen, losses = train(fabric, model, optimizer, batches, 3)
    return {"draws": draws, "samples": seen, "losses": losses, "scale": scale}


def _scaler(fabric):
    return getattr(fabric.strategy.precision, "scaler", None)


def _scale(fabric):
    scaler = _scaler(fabric)
    return None if scaler is None else scaler.get_scale()


def _mark_precision_state(fabric, loaded):
    precision = fabric.strategy.precision
    state_dict, load_state_dict = precision.state_dict, precision.load_state_dict
    precision.state_dict = lambda: {**state_dict(), "marker": PRECISION_MARKER}
    precision.load_state_dict = lambda state: (loaded.append(state.get("marker")), load_state_dict(state))


def attempt(call):
    """'ok', or the error's type name and message."""
    try:
        call()
        return "ok"
    except Exception as error:  # noqa: BLE001 - the test asserts on the type and message
        return f"{type(error).__name__}: {error}"


def scenario(fabric, directory):
    result, loaded_precision = {}, []
    _mark_precision_state(fabric, loaded_precision)
    path = os.path.join(directory, "checkpoint")

    model, optimizer, loader = build(fabric, 0)
    batches = iter(loader)
    train(fabric, model, optimizer, batches, 3)
    if _scaler(fabric) is not None:
        _scaler(fabric).update(SCALE_AT_SAVE)
    fabric.save(path, {"model": model, "optimizer": optimizer, "loader": loader, "step": 3, "note": "kept"})
    result["reference"] = continuation(fabric, model, optimizer, batches)

    model, optimizer, loader = build(fabric, 1)  # other weights, RNG streams and shuffle seed
    if _scaler(fabric) is not None:
        _scaler(fabric).update(8.0)
    state = {"model": model, "optimizer": optimizer, "loader": loader, "step": 0}
    # The default, safe load restores everything, under every strategy.
    remainder = {}
    result["safe_load"] = attempt(lambda: remainder.update(fabric.load(path, state)))
    result["remainder"], result["step"] = remainder, state["step"]
    result["precision_loaded"] = list(loaded_precision)
    result["resumed"] = continuation(fabric, model, optimizer, iter(loader))

    # With its optimizer: ZeRO-3 rebuilds a model loaded alone with DeepSpeed's own full unpickler (refused safely).
    absent = {"model": model, "optimizer": optimizer, "absent": 1}
    result["strict"] = attempt(lambda: fabric.load(path, absent))
    result["non_strict_remainder"] = sorted(fabric.load(path, absent, strict=False))
    result["non_strict_absent"] = absent["absent"]

    unsafe_path = os.path.join(directory, "unsafe")
    fabric.save(unsafe_path, {"model": model, "note": Fraction(1, 3)})
    unsafe = {"model": model, "note": None}
    result["unsafe_default"] = attempt(lambda: fabric.load(unsafe_path, unsafe))
    result["unsafe_trusted"] = attempt(lambda: fabric.load(unsafe_path, unsafe, weights_only=False))
    result["unsafe_note"] = unsafe["note"]
    return result


def run_case(fabric, out, case):
    """Run the scenario under the launched `fabric`; every rank writes its observations (or its error)."""
    directory = os.path.join(out, case)
    os.makedirs(directory, exist_ok=True)
    try:
        result = scenario(fabric, directory)
    except Exception:  # noqa: BLE001 - reported to the test, which shows it
        result = {"error": traceback.format_exc()}
    torch.save(result, os.path.join(directory, f"rank{fabric.global_rank}.pt"))


def main(out, cases):
    for case in cases:
        strategy, devices, precision = CASES[case]
        strategy = strategy if isinstance(strategy, str) else strategy()
        fabric = Fabric(accelerator="cpu", devices=devices, strategy=strategy, precision=precision)
        if case in SPAWNING:
            fabric.launch(functools.partial(run_case, out=out, case=case))
        else:
            fabric.launch()
            run_case(fabric, out, case)
            fabric.barrier()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
