"""Run by test_tuner_ddp.py as `python loops_ddp_tuner.py OUT_DIR`: on 2 gloo processes (strategy="ddp"),
the learning-rate range test (each rank sees its own shard, so their losses differ), then a fit with EMA weight
averaging and the ThroughputMonitor. Each rank saves what it saw to OUT_DIR/rank{r}.pt."""
import sys
from pathlib import Path

import torch

import loops as L
from loops.callbacks import EMAWeightAveraging, ThroughputMonitor
from loops.tuner import Tuner
from tests.helpers.loops import Regression, loader


class Recording:
    def __init__(self):
        self.keys = set()

    def log_metrics(self, metrics, step=None):
        self.keys.update(metrics)


def main(out_dir: str) -> None:
    torch.manual_seed(0)
    model = Regression(lr=0.05)
    logger = Recording()
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, logger=False,
                        enable_progress_bar=False, enable_checkpointing=False, num_sanity_val_steps=0,
                        log_every_n_steps=1, callbacks=[EMAWeightAveraging(decay=0.5),
                                                        ThroughputMonitor(lambda batch: len(batch[0]), window_size=2)])
    trainer.loggers = [logger]
    finder = Tuner(trainer).lr_find(model, train_dataloaders=loader(256, batch_size=4), min_lr=1e-3, max_lr=100.0,
                                    num_training=60)
    step_after_tuning = trainer.global_step
    trainer.fit(model, loader(32, batch_size=4))
    torch.save({"rank": trainer.global_rank, "results": finder.results, "suggestion": finder.suggestion(),
                "lr": model.hparams.lr, "step_after_tuning": step_after_tuning, "global_step": trainer.global_step,
                "weight": model.layer.weight.detach().clone(), "logged": sorted(logger.keys)},
               Path(out_dir) / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1])
