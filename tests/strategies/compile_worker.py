"""The script behind test_compile.py: `fabric.setup(torch.compile(model), optimizer)` on 2 CPU processes.

    python compile_worker.py OUT_DIR STRATEGY [STRATEGY ...]     # STRATEGY: ddp or fsdp

For each STRATEGY in turn, in the same 2 processes (each in a Fabric of its own, on the process group the first one
set up), the same training runs uncompiled and compiled (backend "aot_eager"); each saves its model with
`fabric.save` to OUT_DIR/<strategy>/<plain|compiled>.ckpt (one full file). Rank r writes OUT_DIR/rank<r>.pt, by
strategy: the losses of both runs and how the returned module is built (compiled outside the strategy's wrapper?).
"""
import os
import sys

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.nn.parallel import DistributedDataParallel

from fabric_kit import Fabric
from fabric_kit.strategies.fsdp import FSDPStrategy

STEPS = 4


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 4))

    def forward(self, x):
        return self.layers(x)


def run(fabric, compiled, out_dir):
    torch.manual_seed(0)
    model = Net()
    if compiled:
        model = torch.compile(model, backend="aot_eager")
    model, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    generator = torch.Generator().manual_seed(fabric.global_rank)
    losses = []
    for _ in range(STEPS):
        x, y = torch.randn(16, 8, generator=generator), torch.randint(0, 4, (16,), generator=generator)
        loss = nn.functional.cross_entropy(model(x), y)
        fabric.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    fabric.save(os.path.join(out_dir, f"{'compiled' if compiled else 'plain'}.ckpt"), {"model": model})
    outer = model._forward_module
    inner = getattr(outer, "_orig_mod", None)
    return {"losses": losses, "outer": type(outer).__name__,
            "compiled_around_wrapper": isinstance(inner, (DistributedDataParallel, FSDPModule))}


def main(out_dir, strategies):
    results = {}
    for name in strategies:
        fabric = Fabric(accelerator="cpu", devices=2,
                        strategy=FSDPStrategy(state_dict_type="full") if name == "fsdp" else name)
        fabric.launch()
        strategy_dir = os.path.join(out_dir, name)
        os.makedirs(strategy_dir, exist_ok=True)
        results[name] = {kind: run(fabric, kind == "compiled", strategy_dir) for kind in ("plain", "compiled")}
    torch.save(results, os.path.join(out_dir, f"rank{fabric.global_rank}.pt"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
