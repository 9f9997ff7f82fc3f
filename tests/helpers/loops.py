"""Small models and data for the loops tests: a linear regression that trains in milliseconds on CPU."""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import loops as L

TRAINER_DEFAULTS = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)


def make_trainer(**kwargs):
    """A quiet CPU Trainer; checkpointing is on only when a checkpoint callback is passed."""
    from loops.callbacks import Checkpoint

    defaults = dict(TRAINER_DEFAULTS)
    if any(isinstance(c, Checkpoint) for c in kwargs.get("callbacks") or []):
        defaults["enable_checkpointing"] = True
    return L.Trainer(**{**defaults, **kwargs})


def dataset(n=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 4, generator=generator), torch.randn(n, 1, generator=generator))


def loader(n=32, batch_size=4, seed=0, shuffle=False):
    return DataLoader(dataset(n, seed), batch_size=batch_size, shuffle=shuffle)


class Regression(L.LightningModule):
    """Logs train_loss per step, val_loss / test_loss per epoch."""

    def __init__(self, lr: float = 0.1):
        super().__init__()
        self.save_hyperparameters()
        self.layer = nn.Linear(4, 1)

    def forward(self, x):
        return self.layer(x)

    def loss(self, batch):
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def training_step(self, batch, batch_idx):
        loss = self.loss(batch)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.loss(batch))

    def test_step(self, batch, batch_idx):
        self.log("test_loss", self.loss(batch))

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        return self(batch[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class DropoutRegression(L.LightningModule):
    """Dropout and a per-epoch StepLR: a run's result depends on the restored RNG and scheduler, for the tests that
    kill, preempt and resume a fit."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.3), nn.ReLU(), nn.Linear(16, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=1e-2)
        return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)]


class MomentumRegression(Regression):
    """SGD with momentum: a resumed run matches an uninterrupted one only if the optimizer state came back."""

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


class ScriptedLoss(Regression):
    """Logs val_loss = scores[epoch] (the last score repeats): checkpoint and stopping tests script the metric."""

    def __init__(self, scores):
        super().__init__()
        self.scores = scores

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.scores[min(self.current_epoch, len(self.scores) - 1)])


class Counter(L.Callback):
    """Counts batches and validation runs, records global_step at each batch end."""

    def __init__(self):
        self.train_batches = 0
        self.val_runs = 0
        self.val_batches = 0
        self.steps = []
        self.epochs = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.train_batches += 1
        self.steps.append(trainer.global_step)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.val_batches += int(not trainer.sanity_checking)

    def on_validation_end(self, trainer, pl_module):
        self.val_runs += int(not trainer.sanity_checking)
        self.epochs.append((trainer.current_epoch, trainer.global_step))
