"""Marker base for callbacks that write checkpoints. The Trainer finds `checkpoint_callback(s)` by this class and
resolves `ckpt_path="best"` / `"last"` through their `best_model_path` / `last_model_path` attributes."""
from __future__ import annotations

from loops.callbacks.callback import Callback


class Checkpoint(Callback):
    """Subclasses set `best_model_path` and `last_model_path` ("" until a file was written)."""

    monitors_metrics = True
    best_model_path: str = ""
    last_model_path: str = ""
