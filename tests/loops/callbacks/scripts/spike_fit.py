"""Run by test_spike_rollback.py as `python spike_fit.py OUT_DIR`: Trainer(strategy="ddp", devices=2) re-runs this
script for rank 1. In one launch, on the data and model of tests/spike_worker.py (a shuffled epoch of 64 samples,
batches of 2 per rank, dropout, SGD with momentum), whose loss spikes on rank 1 only, on the batch holding the
sample at BAD_POSITION of epoch 0's order (batch 7: offending batches 6 and 7):

1. `SpikeDetection(on_spike="rollback")` with a ModelCheckpoint saving every 2 steps;
2. the same with the callback's own checkpoints every 3 steps (`every_n_train_steps`, `checkpoint_dir`);
3. a new fit resumed (`ckpt_path`) from a checkpoint of the first written before its rollback: the record of skipped
   samples in its directory leaves them out again;
4. a reference fit whose loader never yields the samples the first fit reports skipped, without any detector;
5. the shuffled fit without the spike and without skipping, for 14 steps (it must end elsewhere: the skip mattered).

Each rank saves what it saw to OUT_DIR/rank<r>.pt.
"""
import json
import os
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader

import loops as L
from loops.callbacks import ModelCheckpoint, SpikeDetection
from tests.spike_worker import BAD_POSITION, BATCH, SIZE, SPIKE, Points

STEPS = SIZE // (2 * BATCH) - 2  # one epoch without the two offending batches


class Spiking(L.LightningModule):
    """tests/spike_worker.py's model; with `spike`, the loss of the batch holding the sample at BAD_POSITION is
    scaled by SPIKE (on rank 1, whose shard holds that position)."""

    def __init__(self, spike: bool = False) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 1))
        self.spike = spike
        self.bad = None

    def on_train_start(self) -> None:
        if self.spike:
            self.bad = self.trainer.fit_loop.train_loader.indices(0, BAD_POSITION, BAD_POSITION + 1)[0]

    def training_step(self, batch, batch_idx):
        x, y, index = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        return loss * SPIKE if self.bad is not None and bool((index == self.bad).any()) else loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def fit(out, name, callbacks, loader, spike=False, ckpt_path=None, **kwargs):
    L.seed_everything(7, verbose=False)
    module = Spiking(spike)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        default_root_dir=os.path.join(out, name), callbacks=callbacks,
                        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks), **kwargs)
    trainer.fit(module, loader, ckpt_path=ckpt_path)
    return trainer, module, {k: v.detach().clone() for k, v in module.state_dict().items()}


def rollback_fit(out, name, **spike_options):
    spike = SpikeDetection(window=3, warmup=2, rtol=10.0, on_spike="rollback", **spike_options)
    callbacks = [spike]
    if "checkpoint_dir" not in spike_options:
        callbacks.append(ModelCheckpoint(dirpath=os.path.join(out, name, "checkpoints"), every_n_train_steps=2,
                                         save_top_k=-1))
    trainer, module, weights = fit(out, name, callbacks, DataLoader(Points(), batch_size=BATCH, shuffle=True),
                                   spike=True)
    record_dir = spike_options.get("checkpoint_dir", os.path.join(out, name))
    with open(os.path.join(record_dir, "skipped_samples.json")) as file:
        record = json.load(file)
    with open(os.path.join(out, name, "skip_batches.json")) as file:
        skip_batches = json.load(file)
    return dict(weights=weights, skipped=spike.skipped, record=record, skip_batches=skip_batches, bad=module.bad,
                global_step=trainer.global_step, order=trainer.fit_loop.train_loader.indices(0, 0, SIZE),
                checkpoints=sorted(os.listdir(os.path.join(out, name, "checkpoints"))))


def main(out):
    with_model_checkpoint = rollback_fit(out, "model_checkpoint")
    own = rollback_fit(out, "own", checkpoint_dir=os.path.join(out, "own", "checkpoints"), every_n_train_steps=3)
    resumed = SpikeDetection(window=3, warmup=2, rtol=10.0, on_spike="rollback")
    before = os.path.join(out, "model_checkpoint", "checkpoints", "epoch=0-step=4.ckpt")
    trainer, _, resumed_weights = fit(out, "model_checkpoint", [resumed, ModelCheckpoint(
        dirpath=os.path.join(out, "resumed"), every_n_train_steps=2)], DataLoader(Points(), batch_size=BATCH,
                                                                                   shuffle=True),
        spike=True, ckpt_path=before)
    resumed_fit = dict(weights=resumed_weights, skipped=resumed.skipped, global_step=trainer.global_step)
    # epoch 0's shuffled order over both ranks, without the skipped samples, sharded by the loader as any sampler
    left_out = {sample for record in with_model_checkpoint["skipped"] for sample in record["samples"]}
    kept = [i for i in with_model_checkpoint["order"] if i not in left_out]
    _, _, reference = fit(out, "reference", [], DataLoader(Points(), batch_size=BATCH, sampler=kept))
    _, _, unskipped = fit(out, "unskipped", [], DataLoader(Points(), batch_size=BATCH, shuffle=True),
                          max_steps=STEPS)
    result = dict(model_checkpoint=with_model_checkpoint, own=own, resumed=resumed_fit, reference=reference,
                  unskipped=unskipped)
    torch.save(result, os.path.join(out, f"rank{torch.distributed.get_rank()}.pt"))


if __name__ == "__main__":
    main(sys.argv[1])
