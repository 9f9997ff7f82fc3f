"""Run by test_trainer_ddp.py as `python loops_ddp_datamodule.py OUT_DIR`: the DataModule seed as a user writes it
(prepare_data/setup, on_step + on_epoch logging, a torchmetrics metric, a custom callback), fitted with
Trainer(devices=2, strategy="ddp") on CPU, then trainer.test and trainer.predict with a prediction-writing callback.
Each rank saves what it saw to OUT_DIR/rank{r}.pt."""
import sys
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset, random_split
from torchmetrics.classification import MulticlassAccuracy

import loops as pl
from loops.callbacks import BasePredictionWriter


def blobs(n, seed):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=generator)
    return TensorDataset(torch.randn(n, 8, generator=generator) * 0.3 + F.one_hot(labels, 8).float(), labels)


class BlobData(pl.LightningDataModule):
    def __init__(self, batch_size: int = 8):
        super().__init__()
        self.save_hyperparameters()
        self.prepared_here = False

    def prepare_data(self):
        self.prepared_here = True  # once per node: rank 0 only

    def setup(self, stage=None):
        if stage in ("fit", None):
            self.train_set, self.val_set = random_split(blobs(120, 0), [96, 24],
                                                        generator=torch.Generator().manual_seed(0))
        if stage in ("test", "predict", None):
            self.test_set = blobs(30, 1)  # 30 samples on 2 ranks: each sample is seen exactly once

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=self.hparams.batch_size)

    def test_dataloader(self):
        return DataLoader(self.test_set, batch_size=self.hparams.batch_size)

    def predict_dataloader(self):
        return DataLoader(self.test_set, batch_size=self.hparams.batch_size)


class Classifier(pl.LightningModule):
    def __init__(self, lr: float = 0.1):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        self.val_acc = MulticlassAccuracy(num_classes=3, average="micro")

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        if self.global_rank == 0:  # without rank_zero_only, sync_dist here would wait for rank 1 forever
            self.log("rank0_only", float(self.global_rank + 10), rank_zero_only=True, sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.val_acc(self(x).argmax(-1), y)
        self.log("val_acc", self.val_acc, on_epoch=True, prog_bar=True)
        self.log("val_loss", F.cross_entropy(self(x), y), sync_dist=True)

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_acc", (self(x).argmax(-1) == y).float().mean(), sync_dist=True)

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        return self(batch[0]).argmax(-1)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


class EpochRecorder(pl.Callback):
    def __init__(self):
        self.train_batches = 0
        self.val_acc = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.train_batches += 1

    def on_validation_end(self, trainer, pl_module):  # the epoch's reductions are published by now
        if not trainer.sanity_checking:
            self.val_acc.append(trainer.callback_metrics["val_acc"].item())


class PredictionWriter(BasePredictionWriter):
    """Each rank keeps (here: collects; a real one writes a file per rank) its batches and their dataset indices."""

    def __init__(self):
        super().__init__(write_interval="batch")
        self.written = []

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        self.written.append((batch_indices, prediction.tolist()))


def main(out_dir: str) -> None:
    pl.seed_everything(0)
    dm = BlobData(batch_size=8)
    model = Classifier()
    recorder, writer = EpochRecorder(), PredictionWriter()
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=4, callbacks=[recorder, writer],
                         default_root_dir=out_dir, enable_progress_bar=False)
    trainer.fit(model, datamodule=dm)
    fit_metrics = {k: v.item() for k, v in trainer.callback_metrics.items()}
    trainer.strategy.barrier("after fit")
    collectives = (trainer.strategy.broadcast(f"from rank {trainer.global_rank}"),
                   trainer.strategy.all_gather(torch.tensor([trainer.global_rank * 2])).flatten().tolist(),
                   trainer.strategy.reduce_boolean_decision(trainer.global_rank == 1, all=False))
    tested = trainer.test(datamodule=dm, verbose=False)
    predictions = trainer.predict(model, datamodule=dm)
    torch.save({"rank": trainer.global_rank, "prepared": dm.prepared_here, "fit_metrics": fit_metrics,
                "collectives": collectives,
                "train_batches": recorder.train_batches, "val_acc": recorder.val_acc, "tested": tested,
                "predictions": [p.tolist() for p in predictions], "written": writer.written,
                "global_step": trainer.global_step, "weight": model.net[0].weight.detach().clone()},
               Path(out_dir) / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1])
