"""Hyperparameter search that runs inside a Trainer: the learning-rate range test and the batch-size search."""
from loops.tuner.tuning import Tuner

__all__ = ["Tuner"]
