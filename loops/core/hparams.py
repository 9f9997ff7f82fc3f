"""`save_hyperparameters`: record the arguments a module or datamodule was built with, so a checkpoint can rebuild
it (`load_from_checkpoint`) and loggers can show them."""
from __future__ import annotations

import copy
import dataclasses
import inspect
import types
import warnings
from argparse import Namespace
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from fabric_kit.utilities import AttributeDict


class HyperparametersMixin:
    """Shared by LightningModule and LightningDataModule."""

    def __init__(self) -> None:
        super().__init__()
        self._log_hyperparams = True
        self._hparams_name: str | None = "kwargs"  # how load_from_checkpoint passes the saved hparams to __init__

    def save_hyperparameters(self, *args: Any, ignore: str | Iterable[str] | None = None,
                             frame: types.FrameType | None = None, logger: bool = True) -> None:
        """Store the caller's `__init__` arguments (all of them, the names given in `args`, or one dict /
        Namespace passed as `args[0]`; a dataclass's init fields) in `self.hparams`; `ignore` leaves names out."""
        self._log_hyperparams = logger
        if frame is None:
            frame = inspect.currentframe().f_back  # type: ignore[union-attr]
        ignored = {ignore} if isinstance(ignore, str) else set(ignore or ())
        if dataclasses.is_dataclass(self):  # a @dataclass module: its __init__ fields, typically from __post_init__
            init_args = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        else:
            init_args = _init_chain_arguments(frame, self)
        self._hparams_name = "kwargs"  # each argument its own keyword
        if len(args) == 1 and isinstance(args[0], (dict, Namespace)):
            values = dict(vars(args[0]) if isinstance(args[0], Namespace) else args[0])
            # the __init__ argument it came in as, if any (as Lightning records it)
            self._hparams_name = next((name for name, value in init_args.items() if value is args[0]), None)
        elif args:
            missing = [name for name in args if name not in init_args]
            if missing:
                raise ValueError(f"save_hyperparameters got names {missing} that are not arguments of "
                                 f"{type(self).__name__}.__init__; its arguments: {sorted(init_args)}")
            values = {name: init_args[name] for name in args}
        else:
            values = init_args
        values = {k: v for k, v in values.items() if k not in ignored}
        self._set_hparams(values)
        self._hparams_initial = copy.deepcopy({k: v for k, v in values.items()
                                               if not isinstance(v, torch.nn.Module)})

    def _set_hparams(self, values: Mapping[str, Any]) -> None:
        hparams = self.__dict__.get("_hparams")
        if hparams is None:
            hparams = AttributeDict()
            object.__setattr__(self, "_hparams", hparams)
        hparams.update(values)

    @property
    def hparams(self) -> AttributeDict:
        if "_hparams" not in self.__dict__:
            object.__setattr__(self, "_hparams", AttributeDict())
        return self.__dict__["_hparams"]

    @property
    def hparams_initial(self) -> AttributeDict:
        """The hyperparameters as passed to `__init__`, untouched by later edits of `self.hparams`."""
        return AttributeDict(copy.deepcopy(self.__dict__.get("_hparams_initial", {})))


def _init_chain_arguments(frame: types.FrameType | None, obj: Any) -> dict[str, Any]:
    """The arguments of every `__init__` of `obj` on the stack, from the caller outwards: a subclass calling
    `super().__init__(lr)` contributes its own extra arguments, and its values win."""
    values: dict[str, Any] = {}
    while frame is not None and frame.f_code.co_name == "__init__" and frame.f_locals.get("self") is obj:
        values.update(_init_arguments(frame))
        frame = frame.f_back
    return values


def _init_arguments(frame: types.FrameType) -> dict[str, Any]:
    """The named arguments (and **kwargs) of the function running in `frame`, without `self`."""
    code = frame.f_code
    count = code.co_argcount + code.co_kwonlyargcount
    names = list(code.co_varnames[:count])
    local = frame.f_locals
    values = {name: local[name] for name in names[1:] if name in local}
    if code.co_flags & inspect.CO_VARKEYWORDS:
        extra = code.co_varnames[count + (1 if code.co_flags & inspect.CO_VARARGS else 0)]
        values.update(local.get(extra, {}))
    return values


def storable_hparams(hparams: Mapping[str, Any], owner: str) -> dict[str, Any]:
    """The hyperparameters a checkpoint can hold and a safe (weights-only) load can read back: modules and other
    arbitrary objects are left out with a warning — pass them to `load_from_checkpoint` as keyword arguments."""
    kept, dropped = {}, []
    for key, value in hparams.items():
        if _is_plain(value):
            kept[key] = value
        else:
            dropped.append(key)
    if dropped:
        warnings.warn(f"{owner} hyperparameters {dropped} are not plain data (numbers, strings, tensors, lists, "
                      "dicts) and are not stored in the checkpoint; pass them to `load_from_checkpoint(path, "
                      "name=value)` or leave them out with `save_hyperparameters(ignore=[...])`", stacklevel=3)
    return kept


def _is_plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor, torch.dtype, torch.device)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, (str, int)) and _is_plain(v) for k, v in value.items())
    return False
