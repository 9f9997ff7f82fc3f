"""A user script for test_wrappers_ddp.py (2 CPU processes, gloo, strategy="ddp"):

    python wrappers_ddp_worker.py OUT_DIR

Each rank calls the step methods of a module set up under DDP the way a Fabric loop reuses a LightningModule, and
saves the gradients each produced (rank r's batch gives the gradient r + 1 on its own) to OUT_DIR/rank<r>.pt.
"""
import sys
from pathlib import Path

import torch
from torch import nn

from fabric_kit import Fabric


class Steps(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(2, 1, bias=False)

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


def grads_of(fabric, model, loss):
    model.zero_grad()
    fabric.backward(loss)
    return model.module.layer.weight.grad.clone()


def main(out):
    fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp")
    fabric.launch()
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
    torch.save(result, Path(out) / f"rank{fabric.global_rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1])
