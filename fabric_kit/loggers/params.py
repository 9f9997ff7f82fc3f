"""Hyperparameters as loggers store them: a flat dict of plain values, and an `hparams.yaml` file written without
needing a YAML package (every JSON value is valid YAML)."""
from __future__ import annotations

import json
import math
import os
import re
from argparse import Namespace
from collections.abc import Mapping
from enum import Enum
from typing import Any

from torch import Tensor

__all__ = ["as_dict", "flatten", "plain", "write_hparams_yaml"]

_PLAIN_KEY = re.compile(r"[A-Za-z_][\w.\-/]*")


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
    """Write `params` (nested dicts kept) to `path` as YAML that `yaml.safe_load` reads back."""
    lines = [f"{_key(key)}: {json.dumps(_jsonable(value))}" for key, value in params.items()]
    with open(path, "w", encoding="utf-8") as file:
        file.write("\n".join(lines) + "\n" if lines else "{}\n")


def _key(key: Any) -> str:
    key = str(key)
    return key if _PLAIN_KEY.fullmatch(key) and key.lower() not in {"true", "false", "null", "yes", "no", "on", "off"} \
        else json.dumps(key)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Namespace):
        value = vars(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN / infinity
    return plain(value)
