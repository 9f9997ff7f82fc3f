"""Lightning's `lightning.pytorch.loggers.logger`: the base class of loggers; defined in `fabric_kit.loggers`."""
from fabric_kit.loggers import DummyExperiment, Logger, rank_zero_experiment

__all__ = ["DummyExperiment", "Logger", "rank_zero_experiment"]
