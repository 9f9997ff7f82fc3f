"""Rebuild a LightningModule or LightningDataModule from a checkpoint: its saved hyperparameters (overridden by
keyword arguments, which also supply what could not be stored, like sub-modules) go to `__init__`."""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch

from fabric_kit.checkpoint import read_checkpoint as read_fabric_checkpoint
from fabric_kit.checkpoint.consolidate import read_consolidated
from fabric_kit.collections import move_to_device


def read_checkpoint(path: str | Path, map_location: Any = None) -> dict[str, Any]:
    """A checkpoint written by `Trainer.save_checkpoint`, read without a Trainer (verified, safe loading); a
    directory of shards (written under FSDP or ModelParallelStrategy) is gathered whole in this process, as
    `fabric consolidate` does."""
    if not Path(path).is_dir():
        return read_fabric_checkpoint(path, map_location="cpu" if map_location is None else map_location)
    if map_location is not None and not isinstance(map_location, (str, torch.device)):
        raise ValueError(f"map_location={map_location!r} cannot place the tensors of the sharded checkpoint "
                         f"{str(path)!r}; accepted for a directory: None (the CPU), a device or its name")
    checkpoint = read_consolidated(path)
    return checkpoint if map_location is None else move_to_device(checkpoint, torch.device(map_location))


def init_kwargs(cls: type, hparams: dict[str, Any]) -> dict[str, Any]:
    """The hyperparameters `cls.__init__` accepts (all of them when it takes **kwargs)."""
    parameters = inspect.signature(cls.__init__).parameters  # type: ignore[misc]  # the class's own __init__
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return hparams
    return {k: v for k, v in hparams.items() if k in parameters}


def load_from_checkpoint(cls: type, checkpoint_path: str | Path, map_location: Any = None,
                         hparams_file: str | Path | None = None, strict: bool | None = None, **kwargs: Any) -> Any:
    """`Model.load_from_checkpoint(path, **overrides)`: a new LightningModule with the checkpoint's weights, in eval
    mode."""
    checkpoint = _read(checkpoint_path, map_location, hparams_file)
    obj = _from_hyperparameters(cls, checkpoint, "", kwargs)
    obj.configure_model()  # the layers it creates receive the weights (a no-op unless the module overrides it)
    obj.on_load_checkpoint(checkpoint)
    if "state_dict" not in checkpoint:
        raise KeyError(f"checkpoint {str(checkpoint_path)!r} has no 'state_dict' (model weights); its keys: "
                       f"{sorted(checkpoint)}")
    obj.load_state_dict(checkpoint["state_dict"], strict=True if strict is None else strict)
    if isinstance(map_location, (str, torch.device)):
        obj.to(torch.device(map_location))
    obj.eval()
    return obj


def load_datamodule_from_checkpoint(cls: type, checkpoint_path: str | Path, map_location: Any = None,
                                    hparams_file: str | Path | None = None, **kwargs: Any) -> Any:
    """`DataModule.load_from_checkpoint(path, **overrides)`: a new LightningDataModule with the checkpoint's state
    (what its `state_dict` returned) when the checkpoint holds one."""
    checkpoint = _read(checkpoint_path, map_location, hparams_file)
    obj = _from_hyperparameters(cls, checkpoint, "datamodule_", kwargs)
    if cls.__qualname__ in checkpoint:
        obj.load_state_dict(checkpoint[cls.__qualname__])
    return obj


def _read(checkpoint_path: str | Path, map_location: Any, hparams_file: str | Path | None) -> dict[str, Any]:
    if hparams_file is not None:
        raise ValueError(f"hparams_file={str(hparams_file)!r} is not supported: the checkpoint carries the "
                         "hyperparameters; pass overrides as keyword arguments")
    return read_checkpoint(checkpoint_path, map_location)


def _from_hyperparameters(cls: type, checkpoint: dict[str, Any], prefix: str, overrides: dict[str, Any]) -> Any:
    """`cls` built from the checkpoint's saved hyperparameters (under `prefix`), overridden by `overrides`."""
    hparams = {**checkpoint.get(f"{prefix}hyper_parameters", {}), **overrides}
    name = checkpoint.get(f"{prefix}hparams_name")
    if name not in (None, "kwargs"):  # saved as one dict: `save_hyperparameters(hparams)` in `__init__(hparams)`
        hparams = {name: hparams, **overrides}
    return cls(**init_kwargs(cls, hparams))
