"""Lightning's `lightning.pytorch.loggers.logger`: the base class of loggers; defined in `fabric_kit.loggers`."""
import os

from fabric_kit.loggers import DummyExperiment, Logger, rank_zero_experiment


class ExperimentRootDir:
    """For the folder loggers under Lightning's Trainer names: `root_dir` is the experiment's folder,
    `save_dir/name`, which holds its `version_N` folders (Lightning's pytorch loggers' meaning)."""

    save_dir: str
    name: str

    @property
    def root_dir(self) -> str:
        return os.path.join(self.save_dir, self.name or "")


__all__ = ["DummyExperiment", "Logger", "rank_zero_experiment"]
