"""Module attributes imported on first access (PEP 562), for the public modules at Lightning's import paths: naming
`FSDPStrategy` or `DeepSpeedPrecision` there must not make `import fabric_kit.strategies` pay for FSDP, DeepSpeed
or XLA."""
from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["lazy_attributes", "resolve"]  # public: loops' modules at Lightning's paths use it too


def resolve(target: str) -> Any:
    """The object a `"module:attribute"` path names, importing its module."""
    path, attribute = target.split(":")
    return getattr(importlib.import_module(path), attribute)


def lazy_attributes(module_name: str, targets: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`(__getattr__, __dir__)` for module `module_name`, resolving each name of `targets` from its
    `"module:attribute"` on first access and keeping it in the module, so the import happens once."""

    def __getattr__(name: str) -> Any:
        target = targets.get(name)
        if target is None:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        value = resolve(target)
        setattr(sys.modules[module_name], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[module_name]), *targets})

    return __getattr__, __dir__
