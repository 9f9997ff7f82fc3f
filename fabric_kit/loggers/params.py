"""Hyperparameters as loggers store them: a flat dict of plain values, and an `hparams.yaml` file."""
from __future__ import annotations

import os
from argparse import Namespace
from collections.abc import Mapping
from enum import Enum
from typing import Any

from torch import Tensor

__all__ = ["as_dict", "flatten", "plain", "write_hparams_yaml"]


def as_dict(params: Mapping[str, Any] | Namespace | None) -> dict[str, Any]:
    """A Namespace or mapping as a plain dict (None gives {})."""
    if params is None:
        return {}
    if isinstance(params, Namespace):
        return dict(vars(params))
    if isinstance(params, Mapping):
        return dict(params)
    raise TypeError(f"hyperparameters must be a dict or an argparse.Namespace; got {type(params).__name__}")


def flatten(params: Mapping[str, Any], separator: str = "/") -> dict[str, Any]:
    """Nested dicts (and Namespaces) become one level: {"opt": {"lr": 1}} -> {"opt/lr": 1}."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, Namespace):
            value = vars(value)
        if isinstance(value, Mapping) and value:
            for sub_key, sub_value in flatten(value, separator).items():
                flat[f"{key}{separator}{sub_key}"] = sub_value
        else:
            flat[str(key)] = value
    return flat


def plain(value: Any) -> Any:
    """A value a logger backend can store: numbers, strings, bools and None stay; one-element tensors become
    numbers; enums their name; functions and classes their name; anything else its str()."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, Enum):
        return value.name
    if callable(value) and hasattr(value, "__name__"):
        return value.__name__
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return str(value)


def write_hparams_yaml(path: str | os.PathLike[str], params: Mapping[str, Any]) -> None:
    """Write `params` to `path` with `yaml.safe_dump`, in their order, nested dicts kept and every value made plain
    (see `plain`): `yaml.safe_load` and Lightning's `load_hparams_from_yaml` read it back."""
    import yaml  # here rather than at the top, so that `import fabric_kit` stays light

    with open(path, "w", encoding="utf-8") as file:
        yaml.safe_dump(_plain_tree(params), file, sort_keys=False, allow_unicode=True)


def _plain_tree(value: Any) -> Any:
    """Namespaces and mappings as dicts with string keys, lists and tuples as lists, anything else `plain`; a
    subclass of bool, int, float or str (a numpy float, an IntEnum) as its base type, since safe_dump knows those
    types only."""
    if isinstance(value, Namespace):
        value = vars(value)
    if isinstance(value, Mapping):
        return {str(key): _plain_tree(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_tree(item) for item in value]
    value = plain(value)
    return next((kind(value) for kind in (bool, int, float, str) if isinstance(value, kind)), value)
