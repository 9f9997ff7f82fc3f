"""Train a digits classifier with loops' LightningCLI: the model, the data and the Trainer are built from
config.yaml and command-line overrides, as with Lightning's LightningCLI.

    python examples/loops/cli_train.py fit --config examples/loops/config.yaml
    python examples/loops/cli_train.py fit --config examples/loops/config.yaml --trainer.max_epochs 3 \
        --model.init_args.hidden 32 --data.batch_size 64
    python examples/loops/cli_train.py fit --config examples/loops/config.yaml --model ConvClassifier
    python examples/loops/cli_train.py fit --config examples/loops/config.yaml --optimizer SGD --optimizer.lr 0.1
    python examples/loops/cli_train.py fit --config examples/loops/config.yaml --print_config > full.yaml
    python examples/loops/cli_train.py test --config examples/loops/config.yaml --ckpt_path <a .ckpt from fit>
    fabric run --devices 2 examples/loops/cli_train.py fit --config examples/loops/config.yaml
    python examples/loops/cli_train.py fit --help          # every option, with its type and default

Each fit writes its resolved config to runs/cli/lightning_logs/version_N/config.yaml; `--config` that file
repeats the run. The data ships with scikit-learn (the `examples` extra), so nothing is downloaded.
"""
from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, random_split

import loops as L
from loops.cli import LightningCLI


class DigitsDataModule(L.LightningDataModule):
    """scikit-learn's 8x8 digits: 1437 training images (of which `val_fraction` validate) and 360 test images.

    Args:
        batch_size: Images per batch on each process.
        val_fraction: Share of the training images held out for validation.
    """

    def __init__(self, batch_size: int = 32, val_fraction: float = 0.2) -> None:
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str) -> None:
        data = load_digits()
        images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
        dataset = TensorDataset(images, torch.tensor(data.target))
        split = int(0.8 * len(dataset))
        train = torch.utils.data.Subset(dataset, range(split))
        val_size = int(self.hparams.val_fraction * len(train))
        self.train_set, self.val_set = random_split(train, [len(train) - val_size, val_size],
                                                    generator=torch.Generator().manual_seed(0))
        self.test_set = torch.utils.data.Subset(dataset, range(split, len(dataset)))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=256)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=256)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()


class DigitsClassifier(L.LightningModule):
    """A multi-layer perceptron over the 64 pixels.

    Args:
        hidden: Width of the hidden layer.
        lr: Adam's learning rate (unless --optimizer chooses another optimizer).
    """

    def __init__(self, hidden: int = 64, lr: float = 1e-2) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def training_step(self, batch, batch_idx):
        images, labels = batch
        loss = nn.functional.cross_entropy(self(images), labels)
        self.log("train_loss", loss)
        return loss

    def evaluate(self, batch, stage: str) -> None:
        images, labels = batch
        logits = self(images)
        self.log(f"{stage}_loss", nn.functional.cross_entropy(logits, labels), sync_dist=True)
        self.log(f"{stage}_acc", (logits.argmax(1) == labels).float().mean(), prog_bar=True, sync_dist=True)

    def validation_step(self, batch, batch_idx):
        self.evaluate(batch, "val")

    def test_step(self, batch, batch_idx):
        self.evaluate(batch, "test")

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        return self(batch[0]).argmax(1)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class ConvClassifier(DigitsClassifier):
    """Two small convolutions before the classifier.

    Args:
        channels: Channels of the first convolution (the second has twice as many).
        lr: Adam's learning rate.
    """

    def __init__(self, channels: int = 16, lr: float = 1e-2) -> None:
        super().__init__(lr=lr)
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * channels * 2 * 2, 10))


if __name__ == "__main__":
    LightningCLI(DigitsClassifier, DigitsDataModule, subclass_mode_model=True)
