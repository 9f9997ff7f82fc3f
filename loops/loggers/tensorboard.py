"""Lightning's `lightning.pytorch.loggers.tensorboard` (Hydra configs name `...tensorboard.TensorBoardLogger` in
`_target_`); defined in `fabric_kit.loggers`."""
from fabric_kit.loggers import TensorBoardLogger

__all__ = ["TensorBoardLogger"]
