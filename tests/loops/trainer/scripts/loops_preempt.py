"""Run by test_preemption.py as `python loops_preempt.py OUT_DIR MODE`, with Trainer(strategy="ddp", devices=2):
started as it is (the script re-runs itself for rank 1), by `fabric run`, or as two SLURM tasks. MODE "preempt"
pauses both ranks after step 3 until OUT_DIR/go exists (rank 0 writes OUT_DIR/ready first), so that the test's
signal arrives mid-epoch; the Trainer then saves at a step boundary and ends the process. "resume" reruns it with
ckpt_path="last"; "full" trains uninterrupted. Dropout and shuffling make the result depend on the restored RNG and
dataloader position. Every process appends its pid to OUT_DIR/pids; on_preempt writes OUT_DIR/preempted<rank> (the
step); rank 0 writes OUT_DIR/<MODE>.pt with the final weights."""
import os
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

import loops as L
from loops.callbacks import ModelCheckpoint
from tests.helpers.loops import DropoutRegression

PAUSE_STEP = 3


class PauseForSignal(L.Callback):
    def __init__(self, out: Path):
        self.out = out

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step != PAUSE_STEP:
            return
        if trainer.is_global_zero:
            (self.out / "ready").touch()
        deadline = time.monotonic() + 60
        while not (self.out / "go").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # a forwarded signal reaches every rank before they go on

    def on_preempt(self, trainer, pl_module):
        (self.out / f"preempted{trainer.global_rank}").write_text(str(trainer.global_step))


def main(out: Path, mode: str) -> None:
    with open(out / "pids", "a") as pids:
        pids.write(f"{os.getpid()}\n")
    L.seed_everything(0)
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(64, 4, generator=generator), torch.randn(64, 1, generator=generator))
    callbacks = [ModelCheckpoint(dirpath=out / ("full" if mode == "full" else "run"))]
    if mode == "preempt":
        callbacks.append(PauseForSignal(out))
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=3, callbacks=callbacks,
                        logger=False, enable_progress_bar=False, enable_model_summary=False)
    model = DropoutRegression()
    trainer.fit(model, DataLoader(data, batch_size=4, shuffle=True), ckpt_path="last" if mode == "resume" else None)
    if trainer.is_global_zero:
        torch.save({"weights": model.state_dict(), "global_step": trainer.global_step}, out / f"{mode}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
