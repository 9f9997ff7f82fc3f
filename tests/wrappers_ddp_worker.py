"""A user script for test_wrappers_ddp.py (2 CPU processes, gloo, strategy="ddp"):

    python wrappers_ddp_worker.py OUT_DIR

Each rank calls the step methods of a module set up under DDP the way a Fabric loop reuses a LightningModule, and
saves the gradients each produced (rank r's batch gives the gradient r + 1 on its own) to OUT_DIR/rank<r>.pt.
fsdp_worker.py runs `step_methods` under FSDP2 too.
"""
import sys
from pathlib import Path

import torch
from torch import nn

from fabric_kit import Fabric


class Steps(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(2, 2, bias=False)  # two rows: one per rank's shard under FSDP

    def forward(self, x):
        return self.layer(x)

    def training_step(self, batch):
        return self(batch).sum()

    def validation_step(self, batch):
        return self(batch).sum()

    def custom_step(self, batch):
        return self.layer(batch).sum()

    def unmarked(self, batch):
        return self.layer(batch).sum()


AVERAGED = torch.full((2, 2), 1.5)
"""The gradient each step method gives on both ranks: rank r's batch alone gives r + 1, and the strategy averages."""


def grads_of(fabric, model, loss):
    model.zero_grad()
    fabric.backward(loss)
    grad = model.module.layer.weight.grad
    return (grad.full_tensor() if hasattr(grad, "full_tensor") else grad).clone()  # FSDP's is a sharded DTensor


def step_methods(fabric):
    """What each step method's backward gave, and how the wrapper treated an unmarked method and attributes."""
    model = fabric.setup(Steps())
    batch = torch.ones(1, 2) * (fabric.global_rank + 1)
    result = {"training_step": grads_of(fabric, model, model.training_step(batch)),
              "validation_step": grads_of(fabric, model, model.validation_step(batch))}
    try:
        model.unmarked(batch)
    except RuntimeError as error:
        result["unmarked_error"] = str(error)
    model.mark_forward_method("custom_step")
    result["custom_step"] = grads_of(fabric, model, model.custom_step(batch))
    model.flag = "set on the wrapper"
    result["flag_on_module"] = model.module.__dict__.get("flag")
    result["forward_restored"] = "forward" not in model.module.__dict__
    result["device"] = str(model.device)
    return result


def main(out):
    fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp")
    fabric.launch()
    torch.save(step_methods(fabric), Path(out) / f"rank{fabric.global_rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1])
