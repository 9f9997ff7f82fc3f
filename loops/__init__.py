"""Lightning's Trainer layer (Trainer, LightningModule, LightningDataModule, Callback) rebuilt on fabric_kit's
public API: Lightning scripts run with only their import line changed."""
from fabric_kit import seed_everything
from loops.callbacks.callback import Callback
from loops.core.datamodule import LightningDataModule
from loops.core.module import LightningModule
from loops.trainer.trainer import Trainer

__all__ = ["Callback", "LightningDataModule", "LightningModule", "Trainer", "seed_everything"]
