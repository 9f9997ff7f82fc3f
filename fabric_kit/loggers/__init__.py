"""Experiment loggers for `Fabric(loggers=...)` and the loops Trainer. Importing this package imports no logging
backend: tensorboardX is imported when a TensorBoardLogger is built."""
from fabric_kit.loggers.csv_logs import CSVLogger
from fabric_kit.loggers.folder import FolderLogger, agree_on_versions
from fabric_kit.loggers.logger import DummyExperiment, Logger, rank_zero_experiment
from fabric_kit.loggers.tensorboard import TensorBoardLogger

__all__ = ["CSVLogger", "DummyExperiment", "FolderLogger", "Logger", "TensorBoardLogger", "agree_on_versions",
           "rank_zero_experiment"]
