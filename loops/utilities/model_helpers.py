"""`is_overridden`: whether a module, datamodule or callback defines a hook of its own, as Lightning's."""
from __future__ import annotations

from loops.callbacks.callback import Callback
from loops.core.datamodule import LightningDataModule
from loops.core.module import LightningModule
from loops.trainer.hooks import overrides

__all__ = ["is_overridden"]


def is_overridden(method_name: str, instance: object | None = None, parent: type | None = None) -> bool:
    """Whether `instance` defines `method_name` differently from `parent` (by default the LightningModule,
    LightningDataModule or Callback it is); False for no instance. A hook `parent` leaves out (loops' module
    has no `validation_step` to inherit) counts as overridden wherever the instance has it."""
    if instance is None:
        return False
    if parent is None:
        parent = next((base for base in (LightningModule, LightningDataModule, Callback) if isinstance(instance, base)),
                      None)
        if parent is None:
            raise ValueError(f"is_overridden({method_name!r}, {type(instance).__name__}): pass parent=, the class "
                             "that defines the method; it is inferred only for a LightningModule, "
                             "LightningDataModule or Callback")
    return overrides(instance, method_name, parent)
