"""Run by test_kill_resume.py as `python loops_kill_resume.py OUT_DIR MODE [LOADER]`, the way a user reruns a
crashed job: the same script with ckpt_path="last". MODE "kill" dies by SIGKILL in the middle of epoch 1 (3
optimizer steps after the latest checkpoint); "resume" is the rerun; "full" trains uninterrupted. Dropout and
shuffling make the result depend on the restored RNG and dataloader position. LOADER "stateful" trains from
torchdata's StatefulDataLoader (2 workers), which the checkpoint saves through its own state; default a DataLoader.
Writes OUT_DIR/<MODE>.pt with the final weights."""
import os
import signal
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import loops as L
from loops.callbacks import ModelCheckpoint
from tests.helpers.loops import DropoutRegression


class Noisy(DropoutRegression):
    def validation_step(self, batch, batch_idx):
        self.log("val_loss", nn.functional.mse_loss(self.net(batch[0]), batch[1]))


class KillAt(L.Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def train_loader(data, kind):
    if kind == "stateful":
        from torchdata.stateful_dataloader import StatefulDataLoader
        return StatefulDataLoader(data, batch_size=8, shuffle=True, num_workers=2)
    return DataLoader(data, batch_size=8, shuffle=True)


def main(out_dir: str, mode: str, kind: str = "torch") -> None:
    L.seed_everything(0)
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(64, 4, generator=generator), torch.randn(64, 1, generator=generator))
    callbacks = [ModelCheckpoint(dirpath=Path(out_dir) / mode.replace("kill", "run").replace("resume", "run"),
                                 save_last=True, every_n_train_steps=5)]
    if mode == "kill":
        callbacks.append(KillAt(13))  # the latest checkpoint is at step 10: epoch 1, batch 2 of 8
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=3, callbacks=callbacks, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    model = Noisy()
    trainer.fit(model, train_loader(data, kind), DataLoader(data, batch_size=16),
                ckpt_path="last" if mode != "full" else None)
    torch.save({"weights": model.state_dict(), "global_step": trainer.global_step},
               Path(out_dir) / f"{mode}.pt")


if __name__ == "__main__":
    main(*sys.argv[1:4])
