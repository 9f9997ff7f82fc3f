"""The one seam between a training loop and parallelism.

`Fabric` asks the strategy for everything that depends on how the job is distributed: where modules live, how
they are wrapped, how backward and optimizer steps run, the collectives, and checkpoint I/O. Precision-specific
work is delegated to the strategy's `precision`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, ExitStack
from typing import Any, Callable, Iterable

import torch
from torch import Tensor
from torch.nn import Module
from torch.optim import Optimizer

from fabric_kit.accelerators import Accelerator
from fabric_kit.checkpoint import rng
from fabric_kit.checkpoint.collective import all_gather_object
from fabric_kit.checkpoint.io import load_file, save_file
from fabric_kit.checkpoint.state import RESERVED_KEY, restore_into, to_storable
from fabric_kit.collections import move_to_device
from fabric_kit.empty_init import SkipInit
from fabric_kit.precision import Precision
from fabric_kit.strategies.launchers.launcher import Launcher


class Strategy(ABC):
    """Behaviour common to every strategy; single-process defaults for the collectives."""

    launcher: Launcher | None = None
    setup_module_first: bool = False
    """True when the strategy replaces the model's parameters (by shards) as it sets the model up, so optimizers
    must be built afterwards from the set-up module's parameters: `fabric.setup_module(model)`, create the
    optimizers, then `fabric.setup_optimizers(...)`. False: `fabric.setup(model, *optimizers)` takes both."""

    def __init__(self, accelerator: Accelerator | None = None, precision: Precision | None = None) -> None:
        self.accelerator = accelerator
        self.precision = precision or Precision()

    # -- where this process sits --------------------------------------------------------------------------------
    @property
    @abstractmethod
    def root_device(self) -> torch.device: ...

    @property
    def global_rank(self) -> int:
        return 0

    @property
    def local_rank(self) -> int:
        return 0

    @property
    def node_rank(self) -> int:
        return 0

    @property
    def world_size(self) -> int:
        return 1

    @property
    def is_global_zero(self) -> bool:
        return self.global_rank == 0

    def setup_environment(self) -> None:
        """Run once in every process before any model is set up (process groups, current device)."""
        if self.accelerator is not None:
            self.accelerator.setup_device(self.root_device)

    # -- modules and optimizers ---------------------------------------------------------------------------------
    def setup_module_and_optimizers(self, module: Module, optimizers: list[Optimizer],
                                    scheduler: Any = None) -> tuple[Module, list[Optimizer], Any]:
        """Strategies that must see module and optimizers together (DeepSpeed) override this."""
        module = self.setup_module(module)
        return module, [self.setup_optimizer(opt) for opt in optimizers], scheduler

    def setup_module(self, module: Module) -> Module:
        return module

    def setup_optimizer(self, optimizer: Optimizer) -> Optimizer:
        return optimizer

    def module_to_device(self, module: Module) -> None:
        module.to(self.root_device)

    def module_init_context(self, empty_init: bool | None = None) -> AbstractContextManager:
        """Where modules are created: on the device, in the precision's dtype; `empty_init` skips the initialisers
        (sharding strategies create on the meta device instead)."""
        stack = ExitStack()
        stack.enter_context(self.root_device)
        if empty_init:
            stack.enter_context(SkipInit())
        stack.enter_context(self.precision.module_init_context())
        return stack

    def tensor_init_context(self) -> AbstractContextManager:
        stack = ExitStack()
        stack.enter_context(self.root_device)
        stack.enter_context(self.precision.tensor_init_context())
        return stack

    def batch_to_device(self, batch: Any, device: torch.device | None = None) -> Any:
        return move_to_device(batch, device or self.root_device)

    # -- the training step --------------------------------------------------------------------------------------
    def backward(self, tensor: Tensor, module: Module | None, *args: Any, **kwargs: Any) -> None:
        self.precision.backward(tensor, module, *args, **kwargs)

    def optimizer_step(self, optimizer: Optimizer, **kwargs: Any) -> Any:
        return self.precision.optimizer_step(optimizer, **kwargs)

    def clip_gradients_norm(self, module: Module, optimizer: Optimizer, max_norm: float, norm_type: float = 2.0,
                            error_if_nonfinite: bool = True) -> Tensor:
        self.precision.unscale_gradients(optimizer)
        parameters = _optimizer_parameters(optimizer)
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm, norm_type=norm_type,
                                              error_if_nonfinite=error_if_nonfinite)

    def clip_gradients_value(self, module: Module, optimizer: Optimizer, clip_val: float) -> None:
        self.precision.unscale_gradients(optimizer)
        torch.nn.utils.clip_grad_value_(_optimizer_parameters(optimizer), clip_val)

    # -- collectives (single process: identities) ----------------------------------------------------------------
    def all_gather(self, tensor: Tensor, group: Any = None, sync_grads: bool = False) -> Tensor:
        return tensor

    def all_reduce(self, tensor: Tensor, group: Any = None, reduce_op: str | Any = "mean") -> Tensor:
        return tensor

    def barrier(self, name: str | None = None) -> None:
        pass

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return obj

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        return decision

    # -- checkpoints ----------------------------------------------------------------------------------------------
    def save_checkpoint(self, path: str, state: dict[str, Any],
                        filter: dict[str, Callable[[str, Any], bool]] | None = None) -> None:
        """Rank 0 writes one file holding every object's state dict, plus every rank's RNG states and the
        precision's state (the fp16 loss scale) under `RESERVED_KEY`. Every rank must call it."""
        storable = to_storable(state, filter)
        rng_states = all_gather_object(self, rng.capture())
        if self.is_global_zero:
            storable[RESERVED_KEY] = {"rng": dict(enumerate(rng_states)), "precision": self.precision.state_dict()}
            save_file(storable, path)

    def load_checkpoint(self, path: str, state: dict[str, Any] | Module | Optimizer | None = None,
                        strict: bool = True, weights_only: bool = True) -> dict[str, Any]:
        """Restore `state` in place, and with it this rank's RNG states and the precision's state; with `state`
        None, return the checkpoint's entries and restore nothing. `weights_only=False` allows arbitrary pickled
        objects (only for files from a trusted source)."""
        checkpoint = load_file(path, weights_only=weights_only)
        if state is not None and not isinstance(state, dict):
            restore_into({"_": state}, {"_": checkpoint}, strict=strict)
            return {}
        if not isinstance(checkpoint, dict):
            raise TypeError(f"checkpoint {path!r} holds a {type(checkpoint).__name__}, not a dict of entries; "
                            "load it into one module or optimizer with `fabric.load_raw(path, obj)`")
        own = checkpoint.pop(RESERVED_KEY, None)
        if state is None:
            return checkpoint
        remainder = restore_into(state, checkpoint, strict=strict)
        if own is not None:
            self.precision.load_state_dict(own.get("precision", {}))
            rng.for_rank(own["rng"], self.global_rank)
        return remainder

    def teardown(self) -> None:
        if self.accelerator is not None:
            self.accelerator.teardown()


def _optimizer_parameters(optimizer: Optimizer) -> Iterable[Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


class BackwardSyncControl(ABC):
    """A strategy that can skip the gradient all-reduce for some backward passes (gradient accumulation)."""

    @abstractmethod
    def no_backward_sync(self, module: Module, enabled: bool) -> AbstractContextManager: ...
