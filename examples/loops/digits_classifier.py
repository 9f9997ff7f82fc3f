"""A Lightning-style digits classifier trained by loops' Trainer: LightningModule, LightningDataModule, callbacks
and loggers, written exactly as for Lightning except the imports.

    python examples/loops/digits_classifier.py                        # 2 CPU processes (DDP)
    python examples/loops/digits_classifier.py --devices 1 --max-epochs 2

The data is scikit-learn's 8x8 digits (shipped with the package). The learning rate follows a cosine schedule
(logged each epoch by LearningRateMonitor); training stops early when the validation loss stops improving. After
`fit`, the best checkpoint (highest validation accuracy) is tested. Logs go to TensorBoard and CSV under `--root`,
checkpoints to the Lightning layout
`<root>/lightning_logs/version_N/checkpoints/`.
"""
from __future__ import annotations

import argparse

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, random_split

import loops as L
from loops.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from loops.loggers import CSVLogger, TensorBoardLogger


class DigitsDataModule(L.LightningDataModule):
    def __init__(self, batch_size: int = 32) -> None:
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        data = load_digits()
        images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
        full = TensorDataset(images, torch.tensor(data.target))
        self.train_set, self.val_set, self.test_set = random_split(full, [0.7, 0.1, 0.2],
                                                                   generator=torch.Generator().manual_seed(0))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=256)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=256)


class DigitsClassifier(L.LightningModule):
    def __init__(self, lr: float = 1e-2, channels: int = 16) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * channels * 2 * 2, 10),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def _loss_and_accuracy(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = batch
        logits = self(images)
        return nn.functional.cross_entropy(logits, labels), (logits.argmax(dim=1) == labels).float().mean()

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, accuracy = self._loss_and_accuracy(batch)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        self.log("train_acc", accuracy, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        loss, accuracy = self._loss_and_accuracy(batch)
        self.log_dict({"val_loss": loss, "val_acc": accuracy}, prog_bar=True, sync_dist=True)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.log("test_acc", self._loss_and_accuracy(batch)[1], sync_dist=True)

    def configure_optimizers(self) -> dict:
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.trainer.max_epochs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-epochs", type=int, default=12)
    parser.add_argument("--devices", type=int, default=2, help="CPU processes (default 2)")
    parser.add_argument("--strategy", default="auto", help="e.g. ddp, ddp_spawn, fsdp (default: auto)")
    parser.add_argument("--root", default="runs/digits_classifier", help="logs and checkpoints (default %(default)s)")
    args = parser.parse_args()

    L.seed_everything(42)
    checkpoint = ModelCheckpoint(monitor="val_acc", mode="max", save_top_k=2, save_last=True)
    trainer = L.Trainer(
        accelerator="cpu", devices=args.devices, strategy=args.strategy, max_epochs=args.max_epochs,
        default_root_dir=args.root, enable_progress_bar=False,
        callbacks=[checkpoint, EarlyStopping(monitor="val_loss", patience=4), LearningRateMonitor("epoch")],
        logger=[TensorBoardLogger(save_dir=args.root), CSVLogger(save_dir=args.root)],
    )
    datamodule = DigitsDataModule()
    trainer.fit(DigitsClassifier(), datamodule=datamodule)
    results = trainer.test(datamodule=datamodule, ckpt_path="best")
    if trainer.is_global_zero:
        print(f"best checkpoint: {checkpoint.best_model_path} (val_acc {checkpoint.best_model_score:.4f})")
        print(f"test accuracy of the best checkpoint: {results[0]['test_acc']:.4f}")
        print(f"logs: {trainer.logger.log_dir}  (tensorboard --logdir {args.root})")


if __name__ == "__main__":
    main()
