"""Lightning's `lightning.pytorch.loggers.csv_logs` (Hydra configs name `...csv_logs.CSVLogger` in `_target_`):
fabric_kit's logger with the Trainer logger's `root_dir`."""
from fabric_kit.loggers import CSVLogger as FabricCSVLogger
from loops.loggers.logger import ExperimentRootDir


class CSVLogger(ExperimentRootDir, FabricCSVLogger):
    """`fabric_kit.loggers.CSVLogger`, whose `root_dir` is `save_dir/name` as in Lightning's Trainer logger
    (Lightning Fabric's, like fabric_kit's, is the folder given)."""


__all__ = ["CSVLogger"]
