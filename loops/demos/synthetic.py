"""The warning the demo datasets give when they stand in synthetic data for a dataset that is not on disk."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

SEED = 1234  # synthetic data comes from its own generator: building a dataset leaves the global RNG alone


def generator() -> torch.Generator:
    return torch.Generator().manual_seed(SEED)


def warn_synthetic(dataset: str, missing: Path, download: bool) -> None:
    asked = " (download=True is ignored: nothing is downloaded)" if download else ""
    warnings.warn(f"{dataset}: {missing} does not exist{asked}; using synthetic data of the same shapes. Put a copy "
                  "there to train on the real data.", UserWarning, stacklevel=3)
