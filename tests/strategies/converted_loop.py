"""The converted loop of nearly every Fabric script, run unchanged under every strategy: only ACC_STRATEGY differs.

    ACC_STRATEGY=fsdp python converted_loop.py OUT_DIR PHASE
    ACC_STRATEGY=ddp torchrun --nproc-per-node 2 converted_loop.py OUT_DIR PHASE
    ACC_STRATEGY=ddp fabric run --devices 2 converted_loop.py OUT_DIR PHASE

The model and optimizer are built first and set up together; each step clips the gradients by norm. PHASE "train"
trains STEPS steps, saving the model, optimizer, loader and step after SAVE_AT; "resume", the rerun, sets up other
initial weights the same way, loads the checkpoint and trains to the end. Rank 0 prints one JSON line: the strategy,
the losses and norms of the steps it ran, and the first step it ran. ACC_STRATEGY may name several strategies,
comma-separated (ACC_STRATEGY=deepspeed_stage_2,deepspeed_stage_3): the same processes run the loop under each in
turn, a Fabric of its own each, checkpointing to OUT_DIR/<strategy>, one JSON line each.
"""
import json
import os
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fabric_kit import Fabric

STEPS, SAVE_AT = 6, 3


def build(fabric, seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model, optimizer = fabric.setup(model, optimizer)
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(96, 8, generator=generator), torch.randint(0, 4, (96,), generator=generator))
    return model, optimizer, fabric.setup_dataloaders(DataLoader(data, batch_size=8, shuffle=True))


def train(fabric, model, optimizer, loader, state, until, checkpoint=None):
    losses, norms = [], []
    for x, y in loader:
        loss = nn.functional.cross_entropy(model(x), y)
        fabric.backward(loss)
        norms.append(float(fabric.clip_gradients(model, optimizer, max_norm=0.5)))
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        state["step"] += 1
        if state["step"] == SAVE_AT and checkpoint is not None:
            fabric.save(checkpoint, state)
        if state["step"] == until:
            return losses, norms
    raise AssertionError("the loader ran out before the last step")


def main(out_dir, phase):
    for strategy in os.environ["ACC_STRATEGY"].split(","):
        run(strategy, os.path.join(out_dir, strategy), phase)


def run(strategy, out_dir, phase):
    fabric = Fabric(accelerator="cpu", strategy=strategy, devices=1 if strategy == "single_device" else 2)
    fabric.launch()
    fabric.seed_everything(0)
    os.makedirs(out_dir, exist_ok=True)
    checkpoint = os.path.join(out_dir, "checkpoint")
    # "resume" starts from other weights: everything must come from the checkpoint.
    model, optimizer, loader = build(fabric, seed=0 if phase == "train" else 1)
    state = {"model": model, "optimizer": optimizer, "loader": loader, "step": 0}
    if phase == "resume":
        fabric.load(checkpoint, state)
    losses, norms = train(fabric, model, optimizer, loader, state, STEPS, checkpoint if phase == "train" else None)
    fabric.print(json.dumps({"strategy": strategy, "world_size": fabric.world_size, "losses": losses, "norms": norms,
                             "first_step": STEPS - len(losses)}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
