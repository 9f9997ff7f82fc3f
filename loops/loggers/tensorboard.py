"""Lightning's `lightning.pytorch.loggers.tensorboard` (Hydra configs name `...tensorboard.TensorBoardLogger` in
`_target_`): fabric_kit's logger with the Trainer logger's `root_dir`."""
from typing import Any

from torch.nn import Module

from fabric_kit.loggers import TensorBoardLogger as FabricTensorBoardLogger
from loops.core.export import jit_reading
from loops.loggers.logger import ExperimentRootDir


class TensorBoardLogger(ExperimentRootDir, FabricTensorBoardLogger):
    """`fabric_kit.loggers.TensorBoardLogger`, whose `root_dir` is `save_dir/name` as in Lightning's Trainer
    logger (Lightning Fabric's, like fabric_kit's, is the folder given)."""

    def log_graph(self, model: Module, input_array: Any = None) -> None:
        """fabric_kit's `log_graph`; a LightningModule's graph is traced also outside a Trainer."""
        with jit_reading(model):
            super().log_graph(model, input_array)


__all__ = ["TensorBoardLogger"]
