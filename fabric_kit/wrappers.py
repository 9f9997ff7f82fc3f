"""The objects `Fabric.setup*` hands back. They behave like the user's own module, optimizer and dataloader, and
route the few calls that depend on the strategy or precision — forward, step, iteration — through them."""
from __future__ import annotations

from typing import Any, Iterator

import torch
from torch.nn import Module
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from fabric_kit.collections import move_to_device
from fabric_kit.precision import Precision
from fabric_kit.strategies.strategy import Strategy


class FabricModule(Module):
    """Wraps the user's module (and the strategy's wrapper around it, e.g. DDP). `state_dict` and attributes come
    from the user's module, so checkpoints and user code see plain names."""

    def __init__(self, forward_module: Module, precision: Precision, original_module: Module) -> None:
        super().__init__()
        self._forward_module = forward_module
        self._original_module = original_module
        self._precision = precision

    @property
    def module(self) -> Module:
        return self._original_module

    @property
    def _fabric_kit_unwrapped(self) -> Module:
        return self._original_module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        precision = self._precision
        if not precision.transforms_io:  # float32: nothing to convert, no context to enter
            return self._forward_module(*args, **kwargs)
        args, kwargs = precision.convert_input((args, kwargs))
        with precision.forward_context():
            output = self._forward_module(*args, **kwargs)
        return precision.convert_output(output)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self._original_module.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        return self._original_module.load_state_dict(state_dict, strict=strict, assign=assign)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._original_module, name)


class FabricOptimizer:
    """Mixed into a subclass of the user's optimizer class (see `wrap_optimizer`), so `isinstance(opt, Adam)` and LR
    schedulers keep working, while `step` goes through the strategy."""

    _optimizer: Optimizer
    _strategy: Strategy

    @property
    def optimizer(self) -> Optimizer:
        return self._optimizer

    @property
    def _fabric_kit_unwrapped(self) -> Optimizer:
        return self._optimizer

    def step(self, closure: Any = None) -> Any:
        if closure is None:
            return self._strategy.optimizer_step(self._optimizer)
        return self._strategy.optimizer_step(self._optimizer, closure=closure)

    def state_dict(self) -> dict[str, Any]:
        return self._optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._optimizer.load_state_dict(state_dict)


_OPTIMIZER_CLASSES: dict[type, type] = {}


def wrap_optimizer(optimizer: Optimizer, strategy: Strategy) -> FabricOptimizer:
    """A view of `optimizer` whose `step` goes through `strategy`. It shares the optimizer's param groups and state;
    `zero_grad` is the optimizer's own bound method (no extra call on the hot path)."""
    cls = _OPTIMIZER_CLASSES.get(type(optimizer))
    if cls is None:
        cls = type(f"Fabric{type(optimizer).__name__}", (FabricOptimizer, type(optimizer)), {})
        _OPTIMIZER_CLASSES[type(optimizer)] = cls
    wrapped = cls.__new__(cls)
    wrapped.__dict__.update({k: v for k, v in optimizer.__dict__.items() if k not in ("step", "state_dict")})
    wrapped._optimizer = optimizer
    wrapped._strategy = strategy
    wrapped.zero_grad = optimizer.zero_grad
    return wrapped


class FabricDataLoader:
    """Iterates the (possibly re-sharded) loader, moves batches to the device and advances the sampler's epoch on
    every new pass, so shuffling differs per epoch without the user calling `set_epoch`."""

    def __init__(self, dataloader: DataLoader, device: torch.device | None) -> None:
        self._dataloader = dataloader
        # Batches already live on the CPU: moving them there would only cost calls.
        self._device = device if device is not None and device.type != "cpu" else None
        self._epoch = 0

    @property
    def device(self) -> torch.device | None:
        return self._device

    @property
    def _fabric_kit_unwrapped(self) -> DataLoader:
        return self._dataloader

    def __len__(self) -> int:
        return len(self._dataloader)

    def __iter__(self) -> Iterator[Any]:
        loader = self._dataloader
        for sampler in (getattr(loader, "sampler", None), getattr(loader.batch_sampler, "sampler", None)):
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(self._epoch)
        self._epoch += 1
        device = self._device
        if device is None:
            yield from loader
        else:
            for batch in loader:
                yield move_to_device(batch, device)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._dataloader, name)


def is_wrapped(obj: object) -> bool:
    """Whether `obj` was returned by `Fabric.setup*` (a module, optimizer or dataloader)."""
    return isinstance(obj, (FabricModule, FabricOptimizer, FabricDataLoader))
