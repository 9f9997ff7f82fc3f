"""The hook dispatcher. Hooks nobody overrides cost nothing: once per run, each hook name maps to the bound methods
that actually override the base class's no-op, callbacks first and then the module (Lightning's order).

Every hook called through `call`, `call_callbacks` or `call_on` is recorded as the running hook of the logging
scope (`LogScope.hook`) while it runs, so `self.log` knows where it was called from. The per-batch paths take the
`cb` / `mod` lists once and call them directly: their hooks (and the steps) may all log, and record nothing.

Profiling is decided here too, once per run: with a profiler (`Trainer(profiler=...)`), each hook in those lists,
each step (`steps`), module method (`method`) and batch fetch (`batches`) is wrapped to be recorded under
Lightning's action name (`[Callback]<state_key>.<hook>`, `[LightningModule]<class>.<hook>`,
`[LightningDataModule]<class>.<hook>`, `[Strategy]<class>.training_step`); without one (`profiler=None`) the
lists hold the plain bound methods, so the per-batch path makes exactly the calls it makes unprofiled."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from loops.callbacks.callback import Callback
from loops.core.datamodule import LightningDataModule
from loops.core.hooks import DataHooks
from loops.core.module import LightningModule
from loops.profilers import PassThroughProfiler, Profiler

if TYPE_CHECKING:
    import torch

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
        # None: nothing is wrapped (a PassThroughProfiler records nothing, so it is not called either)
        self.profiler: Profiler | None = None if type(trainer.profiler) is PassThroughProfiler else trainer.profiler

    def cb(self, name: str) -> list[Any]:
        hooks = self.callbacks.get(name)
        if hooks is None:
            owners = self.owners[name] = [c for c in self.trainer.callbacks if overrides(c, name, Callback)]
            hooks = self.callbacks[name] = [self.profiled(action_name(c, name), getattr(c, name)) for c in owners]
        return hooks

    def mod(self, name: str) -> list[Any]:
        hooks = self.module.get(name)
        if hooks is None:
            module = self.pl_module
            hooks = self.module[name] = [self.method(name)] if overrides(module, name, LightningModule) else []
        return hooks

    def method(self, name: str) -> Any:
        """The module's `name` method (overridden or not), recorded by the profiler when there is one."""
        return self.profiled(action_name(self.pl_module, name), getattr(self.pl_module, name))

    def profiled(self, action: str, function: Callable[..., Any]) -> Callable[..., Any]:
        """`function` itself without a profiler; else a function that calls it inside `profiler.profile(action)`."""
        profiler = self.profiler
        if profiler is None:
            return function
        profile = profiler.profile

        def run(*args: Any, **kwargs: Any) -> Any:
            with profile(action):
                return function(*args, **kwargs)

        return run

    def steps(self, fabric_module: Any) -> Callable[..., Any]:
        """What runs a step, `steps(module)("training_step", batch, batch_idx)`: the set-up module itself, or
        with a profiler a function recording each step as `[Strategy]<strategy class>.<step>` (Lightning's)."""
        if self.profiler is None:
            return fabric_module
        prefix = self.strategy_action("")
        profile = self.profiler.profile

        def run(step: str, *args: Any) -> Any:
            with profile(prefix + step):
                return fabric_module(step, *args)

        return run

    def strategy_action(self, name: str) -> str:
        """Lightning's action name for the strategy's `name`: `[Strategy]<strategy class>.<name>`."""
        return f"[Strategy]{type(self.trainer.strategy).__name__}.{name}"

    def batches(self, action: str, loader: Iterable[Any]) -> Iterable[Any]:
        """`loader` itself, or with a profiler its batches with each fetch recorded as `action`."""
        if self.profiler is None:
            return loader
        return _profiled_fetches(self.profiler, action, loader)

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
            hook = getattr(owner, name)
            if self.profiler is not None:
                hook = self.profiled(action_name(owner, name), hook)
            return hook(*args)
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


def action_name(owner: object, name: str) -> str:
    """Lightning's profiler action for hook `name` of `owner`: `[Callback]<state_key>.<name>`,
    `[LightningModule]<class>.<name>`, `[LightningDataModule]<class>.<name>`."""
    if isinstance(owner, Callback):
        return f"[Callback]{owner.state_key}.{name}"
    kind = "LightningDataModule" if isinstance(owner, LightningDataModule) else "LightningModule"
    return f"[{kind}]{type(owner).__name__}.{name}"


def _profiled_fetches(profiler: Profiler, action: str, loader: Iterable[Any]) -> Iterator[Any]:
    iterator = iter(loader)
    while True:
        with profiler.profile(action):
            try:
                batch = next(iterator)
            except StopIteration:
                return
        yield batch
