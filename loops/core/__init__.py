from loops.core.datamodule import LightningDataModule
from loops.core.module import LightningModule

__all__ = ["LightningDataModule", "LightningModule"]
