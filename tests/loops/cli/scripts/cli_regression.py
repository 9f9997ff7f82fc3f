"""Run by test_lightning_cli.py as a user's LightningCLI script: `python cli_regression.py SUBCOMMAND [--config ...]
[--group.option value ...]`. `--summary.out_dir DIR` adds a callback writing what each rank ran (stage, model,
hyperparameters, weights, optimizer, metrics, seed) to DIR/<stage>_rank<r>.json; `--then_test_best true` runs
`trainer.test(ckpt_path="best")` after fit, as a Lightning script's `after_fit` would."""
import json
import os
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

import loops as L
from loops.cli import LightningCLI, SaveConfigCallback
from tests.helpers.loops import dataset


class RegressionData(L.LightningDataModule):
    """Random linear-regression data.

    Args:
        n: Training samples (validation and test use 8 others).
        batch_size: Samples per batch.
    """

    def __init__(self, n: int = 32, batch_size: int = 4) -> None:
        super().__init__()
        self.n, self.batch_size = n, batch_size

    def train_dataloader(self):
        return DataLoader(dataset(self.n, seed=0), batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(dataset(8, seed=1), batch_size=4)

    def test_dataloader(self):
        return DataLoader(dataset(8, seed=2), batch_size=4)


class Net(L.LightningModule):
    """A one-hidden-layer regressor.

    Args:
        hidden: Width of the hidden layer.
        lr: SGD's learning rate.
    """

    def __init__(self, hidden: int, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.body = nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, x):
        return self.body(x)

    def step(self, batch, name):
        loss = nn.functional.mse_loss(self(batch[0]), batch[1])
        self.log(name, loss)
        return loss

    def training_step(self, batch, batch_idx):
        return self.step(batch, "train_loss")

    def validation_step(self, batch, batch_idx):
        self.step(batch, "val_loss")

    def test_step(self, batch, batch_idx):
        self.step(batch, "test_loss")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class ScaledNet(Net):
    """Net whose output is multiplied by `scale`.

    Args:
        scale: Output multiplier.
        hidden: Width of the hidden layer.
    """

    def __init__(self, scale: float = 2.0, hidden: int = 3, lr: float = 0.1) -> None:
        super().__init__(hidden=hidden, lr=lr)
        self.save_hyperparameters()

    def forward(self, x):
        return self.hparams.scale * super().forward(x)


class Summary(L.Callback):
    """Writes what this rank ran when a stage ends.

    Args:
        out_dir: Directory for the JSON files.
    """

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def teardown(self, trainer, pl_module, stage):
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        summary = {"rank": trainer.global_rank, "world_size": trainer.world_size, "model": type(pl_module).__name__,
                   "hparams": dict(pl_module.hparams), "global_step": trainer.global_step,
                   "weights": [p.detach().flatten().tolist() for p in pl_module.parameters()],
                   "optimizer": type(optimizer).__name__ if optimizer else None,
                   "lr": optimizer.param_groups[0]["lr"] if optimizer else None,
                   "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
                   "seed": int(os.environ["FABRIC_KIT_GLOBAL_SEED"]), "log_dir": trainer.log_dir,
                   "best": getattr(trainer.checkpoint_callback, "best_model_path", None)}
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"{stage}_rank{trainer.global_rank}.json").write_text(json.dumps(summary))


class RankRecordingSaveConfig(SaveConfigCallback):
    """Leaves a mark of every rank that saved the config (only rank 0 should)."""

    def save_config(self, trainer, pl_module, stage):
        Path(trainer.log_dir, f"saved_by_rank{trainer.global_rank}").touch()


class ScriptCLI(LightningCLI):
    def add_arguments_to_parser(self, parser):
        parser.add_lightning_class_args(Summary, "summary")
        parser.add_argument("--then_test_best", type=bool, default=False, help="Test the best checkpoint after fit.")

    def after_fit(self):
        if self.config.fit.then_test_best:
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path="best", verbose=False)


if __name__ == "__main__":
    ScriptCLI(Net, RegressionData, subclass_mode_model=True, save_config_callback=RankRecordingSaveConfig,
              trainer_defaults={"accelerator": "cpu", "enable_progress_bar": False, "enable_model_summary": False})
