"""The script behind test_spike.py: on 2 CPU processes (gloo), in one launch,

1. a shuffled run with `SpikeDetection(on_spike="rollback")` whose loss spikes on rank 1 only, on the batch holding
   sample BAD (its loss is scaled by SPIKE before backward, so the weights really are damaged);
2. a reference run whose loader never yields the samples the first run reports skipped, without any detector;
3. the same shuffled run without the spike and without skipping (it must end elsewhere: the skip mattered);
4. `on_spike="raise"` on the same spike, as Lightning's.

    python tests/spike_worker.py OUT_DIR

Each rank saves what it saw to OUT_DIR/rank<r>.pt.
"""
import json
import os
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fabric_kit import Fabric
from fabric_kit.spike import SpikeDetection, TrainingSpikeException

SIZE, BATCH, STEPS, SPIKE = 64, 2, 14, 1e4
BAD_POSITION = 29  # in epoch 0's order over both ranks: batch 7 ([28, 32)), rank 1 (odd positions)
SAVE_AT = {3, 6, 7, 10}  # step 7's checkpoint (position 28) already holds batch 6, one of the offending two


class Points(Dataset):
    def __len__(self):
        return SIZE

    def __getitem__(self, index):
        x = torch.linspace(-1, 1, 4) * (index % 7 - 3) / 3 + index / SIZE
        return x, x.sum(0, keepdim=True).sin(), index


def setup(fabric, sampler=None):
    fabric.seed_everything(7)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model, optimizer = fabric.setup(model, optimizer)
    loader = (DataLoader(Points(), batch_size=BATCH, shuffle=True) if sampler is None
              else DataLoader(Points(), batch_size=BATCH, sampler=sampler))
    return model, optimizer, fabric.setup_dataloaders(loader)


def step(fabric, model, optimizer, batch, bad=None):
    x, y, index = batch
    loss = nn.functional.mse_loss(model(x), y)
    if bad is not None and bool((index == bad).any()):
        loss = loss * SPIKE
    optimizer.zero_grad()
    fabric.backward(loss)
    optimizer.step()
    return loss


def weights(model):
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def rollback_run(fabric, out):
    model, optimizer, loader = setup(fabric)
    bad = loader.indices(0, BAD_POSITION, BAD_POSITION + 1)[0]
    spike = SpikeDetection(window=3, warmup=2, rtol=10.0, exclude_batches_path=os.path.join(out, "rollback"),
                           on_spike="rollback", checkpoint_dir=os.path.join(out, "checkpoints"))
    state = {"model": model, "optimizer": optimizer, "loader": loader, "step": 0}
    trained, rollbacks = [], 0
    while state["step"] < STEPS:
        for batch in loader:
            loss = step(fabric, model, optimizer, batch, bad)
            spike.on_train_batch_end(fabric, loss, batch, state["step"], state=state)
            if spike.rolled_back:
                rollbacks += 1
                del trained[state["step"]:]  # what the restored checkpoint had not trained on yet
                break
            trained.append(batch[2].tolist())
            state["step"] += 1
            if state["step"] in SAVE_AT:
                spike.save(fabric, state)
            if state["step"] >= STEPS:
                break
    with open(os.path.join(out, "checkpoints", "skipped_samples.json")) as file:
        record = json.load(file)
    return dict(bad=bad, weights=weights(model), trained=trained, rollbacks=rollbacks, record=record,
                skipped=spike.skipped, checkpoints=sorted(os.listdir(os.path.join(out, "checkpoints"))))


def resumed_run(fabric, out, name=None):
    """A new process's view: fresh objects resumed with `SpikeDetection.load` from the newest checkpoint, or from
    `name` written before the rollback (without the exclusions: the record in the directory brings them), trained
    to the end."""
    model, optimizer, loader = setup(fabric)
    spike = SpikeDetection(on_spike="rollback", checkpoint_dir=os.path.join(out, "checkpoints"))
    state = {"model": model, "optimizer": optimizer, "loader": loader, "step": 0}
    path = spike.load(fabric, state, None if name is None else os.path.join(out, "checkpoints", name))
    loaded_at = state["step"]
    for batch in loader:
        step(fabric, model, optimizer, batch)
        state["step"] += 1
    return dict(checkpoint=os.path.basename(path), loaded_at=loaded_at, steps=state["step"], weights=weights(model))


def reference_run(fabric, skipped):
    """Epoch 0's shuffled order without the skipped samples, sharded by the loader as any sampler is."""
    _, _, shuffled = setup(fabric)
    order = shuffled.indices(0, 0, SIZE)
    left_out = {sample for record in skipped for sample in record["samples"]}
    model, optimizer, loader = setup(fabric, sampler=[i for i in order if i not in left_out])
    seen = []
    for batch in loader:
        step(fabric, model, optimizer, batch)
        seen.append(batch[2].tolist())
    return dict(weights=weights(model), seen=seen)


def unskipped_run(fabric):
    model, optimizer, loader = setup(fabric)
    for count, batch in enumerate(loader):
        if count == STEPS:
            break
        step(fabric, model, optimizer, batch)
    return weights(model)


def raise_run(fabric, out):
    model, optimizer, loader = setup(fabric)
    bad = loader.indices(0, BAD_POSITION, BAD_POSITION + 1)[0]
    spike = SpikeDetection(window=3, warmup=2, rtol=10.0, exclude_batches_path=os.path.join(out, "raise"))
    for batch_idx, batch in enumerate(loader):
        loss = step(fabric, model, optimizer, batch, bad)
        try:
            spike.on_train_batch_end(fabric, loss, batch, batch_idx)
        except TrainingSpikeException as error:
            fabric.barrier()
            with open(os.path.join(out, "raise", "skip_batches.json")) as file:
                return dict(raised_at=batch_idx, message=str(error), skip_batches=json.load(file))
    return dict(raised_at=None)


def main(out):
    fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp")
    fabric.launch()
    rollback = rollback_run(fabric, out)
    result = dict(rollback=rollback, resumed=resumed_run(fabric, out),
                  resumed_before=resumed_run(fabric, out, "epoch=0-samples=12.ckpt"),
                  reference=reference_run(fabric, rollback["skipped"]),
                  unskipped=unskipped_run(fabric), raised=raise_run(fabric, out))
    torch.save(result, os.path.join(out, f"rank{fabric.global_rank}.pt"))


if __name__ == "__main__":
    main(sys.argv[1])
