"""The hook dispatcher. Hooks nobody overrides cost nothing: once per run, each hook name maps to the bound methods
that actually override the base class's no-op, callbacks first and then the module (Lightning's order).

Every hook called through `call`, `call_callbacks` or `call_on` is recorded as the running hook of the logging
scope (`LogScope.hook`) while it runs, so `self.log` knows where it was called from. The per-batch paths take the
`cb` / `mod` lists once and call them directly: their hooks (and the steps) may all log, and record nothing."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from loops.callbacks.callback import Callback
from loops.core.hooks import DataHooks
from loops.core.module import LightningModule

if TYPE_CHECKING:
    import torch

    from loops.core.datamodule import LightningDataModule
    from loops.trainer.trainer import Trainer


def overrides(obj: object, name: str, base: type) -> bool:
    """Whether `obj` (its class, or the instance itself) defines `name` differently from `base`. An object that
    only poses as its class (a `Mock(spec=Callback)`) has every hook."""
    own_attributes = getattr(obj, "__dict__", {})
    if name in own_attributes:  # set on the instance; None switches it off (`model.validation_step = None`)
        return own_attributes[name] is not None
    if type(obj) is not obj.__class__:
        return True
    own = getattr(type(obj), name, None)
    return own is not None and own is not getattr(base, name, None)


class HookTable:
    """Calls the hooks of one run: the trainer's callbacks (read when a hook is first looked up, so the list the
    run attached) and the module; `datamodule` for the data hooks."""

    def __init__(self, trainer: Trainer, module: LightningModule, datamodule: LightningDataModule | None) -> None:
        self.trainer, self.pl_module, self.datamodule = trainer, module, datamodule
        self.state = trainer.run_state
        self.callbacks: dict[str, list[Any]] = {}
        self.owners: dict[str, list[Callback]] = {}  # the callback of each hook in `callbacks`
        self.module: dict[str, list[Any]] = {}
        self.pairs: dict[str, list[tuple[Any, bool]]] = {}

    def cb(self, name: str) -> list[Any]:
        hooks = self.callbacks.get(name)
        if hooks is None:
            owners = self.owners[name] = [c for c in self.trainer.callbacks if overrides(c, name, Callback)]
            hooks = self.callbacks[name] = [getattr(c, name) for c in owners]
        return hooks

    def mod(self, name: str) -> list[Any]:
        hooks = self.module.get(name)
        if hooks is None:
            module = self.pl_module
            hooks = self.module[name] = [getattr(module, name)] if overrides(module, name, LightningModule) else []
        return hooks

    def both(self, name: str) -> list[tuple[Any, bool]]:
        """`cb(name)` then `mod(name)` in one list of (hook, whether it is a callback's: called with the trainer
        and module first)."""
        hooks = self.pairs.get(name)
        if hooks is None:
            hooks = self.pairs[name] = [(h, True) for h in self.cb(name)] + [(h, False) for h in self.mod(name)]
        return hooks

    def call(self, name: str, *args: Any) -> None:
        """Callbacks' hook (with trainer and module first), then the module's."""
        trainer, module, scope = self.trainer, self.pl_module, self.state.scope
        outer, scope.hook = scope.hook, name
        try:
            for hook in self.cb(name):
                hook(trainer, module, *args)
            for hook in self.mod(name):
                hook(*args)
        finally:
            scope.hook = outer

    def call_callbacks(self, name: str, *args: Any, monitoring: bool | None = None) -> None:
        """Only the callbacks; `monitoring` picks those that read epoch metrics (True) or the others (False)."""
        trainer, module, scope = self.trainer, self.pl_module, self.state.scope
        outer, scope.hook = scope.hook, name
        try:
            hooks = self.cb(name)
            for owner, hook in zip(self.owners[name], hooks, strict=True):
                if monitoring is None or bool(getattr(owner, "monitors_metrics", False)) == monitoring:
                    hook(trainer, module, *args)
        finally:
            scope.hook = outer

    def call_on(self, owner: object, name: str, *args: Any) -> Any:
        """`owner.<name>(*args)` (a module, datamodule or callback method, overridden or not); returns its result."""
        scope = self.state.scope
        outer, scope.hook = scope.hook, name
        try:
            return getattr(owner, name)(*args)
        finally:
            scope.hook = outer

    def transfer(self, batch: Any, dataloader_idx: int, device: torch.device) -> Any:
        """The batch-transfer hooks, datamodule's then module's (used when one of them overrides one; fabric moves
        batches otherwise): on_before_batch_transfer, transfer_batch_to_device (the datamodule's when it overrides
        it), on_after_batch_transfer."""
        module, datamodule = self.pl_module, self.datamodule
        sources = (module,) if datamodule is None else (datamodule, module)
        for source in sources:
            batch = self.call_on(source, "on_before_batch_transfer", batch, dataloader_idx)
        mover = datamodule if datamodule is not None and overrides(datamodule, "transfer_batch_to_device",
                                                                   DataHooks) else module
        batch = self.call_on(mover, "transfer_batch_to_device", batch, device, dataloader_idx)
        for source in sources:
            batch = self.call_on(source, "on_after_batch_transfer", batch, dataloader_idx)
        return batch
