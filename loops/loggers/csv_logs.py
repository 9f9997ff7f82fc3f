"""Lightning's `lightning.pytorch.loggers.csv_logs` (Hydra configs name `...csv_logs.CSVLogger` in `_target_`);
defined in `fabric_kit.loggers`."""
from fabric_kit.loggers import CSVLogger

__all__ = ["CSVLogger"]
