"""Run by test_trainer_loggers_ddp.py as `python loops_ddp_loggers.py OUT_DIR [VAL_ROWS]`: a 2-process DDP fit with
the default logger under OUT_DIR (which already holds version_0) whose module logs with sync_dist=True from
training_step, validation_step (per step too, over uneven validation shards), on_train_epoch_end and
on_validation_epoch_end. Each rank saves what it saw to OUT_DIR/rank{r}.pt."""
import sys
from pathlib import Path

import torch

import loops as L
from tests.helpers.loops import Regression, loader


class SyncedLogs(Regression):
    def training_step(self, batch, batch_idx):
        self.log("rank_step", float(self.global_rank), on_step=True, on_epoch=True, sync_dist=True)
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        self.log("val_rows", float(batch[0].shape[0]), on_step=True, on_epoch=True, reduce_fx="sum",
                 sync_dist=True)

    def on_train_epoch_end(self):
        self.log("rank_epoch", float(self.global_rank), sync_dist=True)

    def on_validation_epoch_end(self):
        self.log("rank_max", float(self.global_rank), reduce_fx="max", sync_dist=True)


def main(out_dir: str, val_rows: int = 9) -> None:
    torch.manual_seed(0)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, default_root_dir=out_dir,
                        log_every_n_steps=1, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0)
    # 9 validation rows over 2 processes: 5 (2 batches of 4) on rank 0, 4 (1 batch) on rank 1
    trainer.fit(SyncedLogs(), loader(n=32, batch_size=4), loader(n=val_rows, batch_size=4))
    torch.save({"log_dir": trainer.log_dir, "version": trainer.logger.version,
                "best": trainer.checkpoint_callback.best_model_path,
                "metrics": {k: v.item() for k, v in trainer.callback_metrics.items()}},
               Path(out_dir) / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1], *map(int, sys.argv[2:]))
