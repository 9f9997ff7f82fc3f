"""Hook dispatch that costs nothing for hooks nobody overrides: once per run, each hook name maps to the bound
methods that actually override the base class's no-op, callbacks first and then the module (Lightning's order)."""
from __future__ import annotations

from typing import Any

from loops.callbacks.callback import Callback
from loops.core.module import LightningModule


def overrides(obj: Any, name: str, base: type) -> bool:
    """Whether `obj` (its class, or the instance itself) defines `name` differently from `base`."""
    if name in getattr(obj, "__dict__", {}):
        return True
    own = getattr(type(obj), name, None)
    return own is not None and own is not getattr(base, name, None)


class HookTable:
    """`table.callbacks[name]` and `table.module[name]` list what to call; `call(name, *args)` calls both."""

    def __init__(self, trainer: Any, module: LightningModule, callbacks: list[Callback]) -> None:
        self.trainer, self.pl_module = trainer, module
        self.callback_list = callbacks
        self.callbacks: dict[str, list[Any]] = {}
        self.module: dict[str, list[Any]] = {}

    def cb(self, name: str) -> list[Any]:
        hooks = self.callbacks.get(name)
        if hooks is None:
            hooks = self.callbacks[name] = [getattr(c, name) for c in self.callback_list
                                            if overrides(c, name, Callback)]
        return hooks

    def mod(self, name: str) -> list[Any]:
        hooks = self.module.get(name)
        if hooks is None:
            module = self.pl_module
            hooks = self.module[name] = [getattr(module, name)] if overrides(module, name, LightningModule) else []
        return hooks

    def call(self, name: str, *args: Any) -> None:
        """Callbacks' hook (with trainer and module first), then the module's."""
        trainer, module = self.trainer, self.pl_module
        for hook in self.cb(name):
            hook(trainer, module, *args)
        for hook in self.mod(name):
            hook(*args)

    def call_callbacks(self, name: str, *args: Any, monitoring: bool | None = None) -> None:
        """Only the callbacks; `monitoring` picks those that read epoch metrics (True) or the others (False)."""
        trainer, module = self.trainer, self.pl_module
        for hook in self.cb(name):
            if monitoring is None or getattr(hook.__self__, "monitors_metrics", False) == monitoring:
                hook(trainer, module, *args)
