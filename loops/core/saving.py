"""Rebuild a LightningModule or LightningDataModule from a checkpoint: its saved hyperparameters (or those of an
`hparams_file`, overridden by keyword arguments, which also supply what could not be stored, like sub-modules) go
to `__init__`. Also Lightning's `save_hparams_to_yaml` / `load_hparams_from_yaml`."""
from __future__ import annotations

import inspect
import os
import warnings
from argparse import Namespace
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from fabric_kit.checkpoint import read_checkpoint as read_fabric_checkpoint
from fabric_kit.loggers.params import write_hparams_yaml
from fabric_kit.utilities import move_data_to_device

__all__ = ["load_hparams_from_yaml", "save_hparams_to_yaml"]

CHECKPOINT_HYPER_PARAMS_KEY = "hyper_parameters"
CHECKPOINT_HYPER_PARAMS_NAME = "hparams_name"
CHECKPOINT_HYPER_PARAMS_TYPE = "hparams_type"


def save_hparams_to_yaml(config_yaml: str | Path, hparams: Mapping[str, Any] | Namespace,
                         use_omegaconf: bool = True) -> None:
    """Write `hparams` (a dict, an AttributeDict or a Namespace) to `config_yaml`, whose folder must exist; values
    YAML cannot hold are written as their text. `use_omegaconf` is accepted for Lightning's signature: the file is
    plain YAML either way."""
    folder = os.path.dirname(os.path.abspath(config_yaml))
    if not os.path.isdir(folder):
        raise RuntimeError(f"save_hparams_to_yaml({str(config_yaml)!r}): the folder {folder!r} does not exist")
    if not isinstance(hparams, (Mapping, Namespace)):
        raise TypeError(f"save_hparams_to_yaml takes a dict or a Namespace of hyperparameters, not a "
                        f"{type(hparams).__name__}")
    write_hparams_yaml(config_yaml, vars(hparams) if isinstance(hparams, Namespace) else hparams)


def load_hparams_from_yaml(config_yaml: str | Path, use_omegaconf: bool = True) -> dict[str, Any]:
    """The hyperparameters in `config_yaml` as a dict; a missing file warns and gives `{}`, as in Lightning.
    `use_omegaconf` is accepted for Lightning's signature; the result is a plain dict (no OmegaConf DictConfig)."""
    import yaml  # here rather than at the top: only this reads YAML

    if not os.path.isfile(config_yaml):
        warnings.warn(f"load_hparams_from_yaml: no file {str(config_yaml)!r}; no hyperparameters loaded",
                      RuntimeWarning, stacklevel=2)
        return {}
    with open(config_yaml, encoding="utf-8") as file:
        hparams = yaml.full_load(file)
    return {} if hparams is None else dict(hparams)


def read_checkpoint(path: str | Path, map_location: Any = None) -> dict[str, Any]:
    """A checkpoint written by `Trainer.save_checkpoint`, read without a Trainer (verified, safe loading); a
    directory of shards (written under FSDP or ModelParallelStrategy) is gathered whole in this process, as
    `fabric consolidate` does."""
    if not Path(path).is_dir():
        return read_fabric_checkpoint(path, map_location="cpu" if map_location is None else map_location)
    if map_location is not None and not isinstance(map_location, (str, torch.device)):
        raise ValueError(f"map_location={map_location!r} cannot place the tensors of the sharded checkpoint "
                         f"{str(path)!r}; accepted for a directory: None (the CPU), a device or its name")
    # Here, not at the top: the sharded reader (torch's DCP, DTensor, sympy) costs every Trainer process about
    # a second to import, and only a sharded checkpoint needs it.
    from fabric_kit.checkpoint.consolidate import read_consolidated

    checkpoint = read_consolidated(path)
    return checkpoint if map_location is None else move_data_to_device(checkpoint, torch.device(map_location))


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
    """The checkpoint, its hyperparameters replaced by those of `hparams_file` (a .yaml / .yml file) when given."""
    checkpoint = read_checkpoint(checkpoint_path, map_location)
    if hparams_file is not None:
        if not str(hparams_file).lower().endswith((".yaml", ".yml")):
            raise ValueError(f"hparams_file={str(hparams_file)!r} is not supported; pass a .yaml or .yml file "
                             "(Lightning's .csv tags files are not read)")
        hparams = load_hparams_from_yaml(hparams_file)
        checkpoint[CHECKPOINT_HYPER_PARAMS_KEY] = checkpoint[f"datamodule_{CHECKPOINT_HYPER_PARAMS_KEY}"] = hparams
    return checkpoint


def _from_hyperparameters(cls: type, checkpoint: dict[str, Any], prefix: str, overrides: dict[str, Any]) -> Any:
    """`cls` built from the checkpoint's saved hyperparameters (under `prefix`), overridden by `overrides`."""
    hparams = {**checkpoint.get(f"{prefix}{CHECKPOINT_HYPER_PARAMS_KEY}", {}), **overrides}
    name = checkpoint.get(f"{prefix}{CHECKPOINT_HYPER_PARAMS_NAME}")
    if name not in (None, "kwargs"):  # saved as one dict: `save_hyperparameters(hparams)` in `__init__(hparams)`
        hparams = {name: hparams, **overrides}
    return cls(**init_kwargs(cls, hparams))
