"""Run by test_progress.py as `python loops_progress_fit.py BAR DEVICES LOG_DIR`: a 2-epoch fit (16 training
batches of 4 per process on one device, 8 on two; 4 validation batches) with a CSV logger of version 7 and the
progress bar BAR ("tqdm", "rich" or "default"), then a test run; the test reads what reached stdout."""
import sys

import loops as L
from fabric_kit.loggers import CSVLogger
from loops.callbacks import RichProgressBar, TQDMProgressBar
from tests.helpers.loops import Regression, loader

BARS = {"tqdm": lambda: [TQDMProgressBar(line_every_n_steps=5, line_every_seconds=None)],
        "rich": lambda: [RichProgressBar(line_every_n_steps=5, line_every_seconds=None)],
        "default": lambda: []}


class Shown(Regression):
    def training_step(self, batch, batch_idx):
        loss = self.loss(batch)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.loss(batch), prog_bar=True)


def main(bar: str, devices: int, log_dir: str) -> None:
    trainer = L.Trainer(accelerator="cpu", devices=devices, max_epochs=2, callbacks=BARS[bar](),
                        logger=CSVLogger(log_dir, version=7), enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(Shown(), loader(n=64), loader(n=16))
    trainer.test(Shown(), loader(n=16), verbose=False)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
