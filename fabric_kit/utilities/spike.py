"""Lightning's `lightning.fabric.utilities.spike` path for `fabric_kit.spike`."""
from fabric_kit.spike import SpikeDetection, TrainingSpikeException

__all__ = ["SpikeDetection", "TrainingSpikeException"]
