"""The one seam between a training loop and parallelism.

`Fabric` asks the strategy for everything that depends on how the job is distributed: where modules live, how
they are wrapped, how backward and optimizer steps run, how data is sharded and iterated, the collectives, and
checkpoint I/O. Precision-specific work is delegated to the strategy's `precision`.

What a strategy is handed back is what it made: the module its `setup_module` returned (DDP, the FSDP module,
DeepSpeed's engine; the facade takes it out of fabric_kit's wrapper, and passes a module that was never set up as
it is) and the optimizer its `setup_optimizer` returned. Checkpoint calls are the exception: their `state` (and
`load_raw`'s object) arrive as the user holds them, since a wrapper can have state of its own (the dataloader's
position); `fabric_kit.wrappers.unwrap` reaches the user's objects behind them.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, ExitStack, nullcontext
from typing import Any

import torch
from torch import Tensor
from torch.nn import Module
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from fabric_kit.accelerators import Accelerator
from fabric_kit.checkpoint import rng
from fabric_kit.checkpoint.checkpoint_io import CheckpointIO, TorchCheckpointIO, writes_local_files
from fabric_kit.checkpoint.state import RESERVED_KEY, Filter, check_state, restore_into, to_storable
from fabric_kit.collections import move_to_device
from fabric_kit.empty_init import SkipInit
from fabric_kit.filesystem import is_url
from fabric_kit.memory_estimate import StateLayout
from fabric_kit.precision import Precision
from fabric_kit.rank_zero import share_rank
from fabric_kit.strategies.launchers.launcher import Launcher
from fabric_kit.wrappers import unwrap


class Strategy(ABC):
    """Behaviour common to every strategy; single-process defaults for the collectives."""

    launcher: Launcher | None = None
    setup_module_first: bool = False
    """True when the strategy replaces the model's parameters (by shards) as it sets the model up, so optimizers
    must be built afterwards from the set-up module's parameters: `fabric.setup_module(model)`, create the
    optimizers, then `fabric.setup_optimizers(...)`. False: `fabric.setup(model, *optimizers)` takes both."""
    shards_parameters: bool = False
    """True when each process holds only a shard of the parameters (FSDP, XLA FSDP, DeepSpeed ZeRO stage 3)."""
    owns_optimizer: bool = False
    """True when the strategy's engine wraps the optimizer (DeepSpeed): param groups cannot be added in training."""
    materializes_meta_modules: bool = False
    """True when `setup_module` gives a model created on the meta device (`init_module(empty_init=True)`) storage
    for this rank's part only and initialises it with `reset_parameters()` (FSDP, ModelParallel): the Trainer then
    runs `configure_model` on the meta device, so that no rank ever holds the whole model."""

    def __init__(self, accelerator: Accelerator | None = None, precision: Precision | None = None,
                 checkpoint_io: CheckpointIO | None = None) -> None:
        self.accelerator = accelerator
        self.precision = precision or Precision()
        # Fabric's precision (its `precision=` or plugin) replaces the default, never one given to the strategy.
        self.precision_is_default = precision is None
        self._checkpoint_io = checkpoint_io

    @property
    def uses_checkpoint_io(self) -> bool:
        """False where checkpoints are a directory in the strategy's own format, never one file through
        `checkpoint_io` (DeepSpeed, sharded FSDP): setting a CheckpointIO plugin there is an error."""
        return True

    @property
    def checkpoint_io(self) -> CheckpointIO:
        """How a checkpoint file is written, read and removed (Lightning's CheckpointIO plugin); by default
        `TorchCheckpointIO`, fabric_kit's atomic, checksummed torch.save file."""
        if self._checkpoint_io is None:
            self._checkpoint_io = TorchCheckpointIO()
        return self._checkpoint_io

    @checkpoint_io.setter
    def checkpoint_io(self, io: CheckpointIO) -> None:
        if not isinstance(io, CheckpointIO):
            raise TypeError(f"checkpoint_io must be a CheckpointIO instance (fabric_kit.plugins.io); got "
                            f"{type(io).__name__}")
        if not self.uses_checkpoint_io:
            raise ValueError(f"{type(self).__name__} stores its checkpoints as a directory in its own format, so "
                             f"the CheckpointIO plugin {type(io).__name__} would never be used; remove it from "
                             "plugins=" + self._checkpoint_io_hint())
        self._checkpoint_io = io

    def check_checkpoint_path(self, path: Any, call: str) -> None:
        """Refuse a URL (fsspec's `s3://`, `memory://`, ...) that no CheckpointIO plugin of the user's writes:
        fabric_kit's files and directories are local, and a URL taken as a path would name a local folder."""
        if not is_url(path) or (self.uses_checkpoint_io and not writes_local_files(self.checkpoint_io)):
            return
        hint = "" if self.uses_checkpoint_io else self._checkpoint_io_hint()
        raise ValueError(f"fabric.{call}({str(path)!r}): {type(self).__name__} saves and loads local files and "
                         "directories only, not URLs; accepted: a local path, or Fabric(plugins=[...]) with a "
                         "CheckpointIO that writes one file there" + hint)

    def _checkpoint_io_hint(self) -> str:
        """How to make this strategy write one file through a CheckpointIO plugin, where it can."""
        return ""

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

    def configure_launcher(self) -> None:
        """Choose `launcher`, called by the connector once devices and environment are known; one process needs
        none."""

    def setup_environment(self) -> None:
        """Run once in every process before any model is set up (process groups, current device)."""
        share_rank(self.global_rank, load=True)  # a spawned rank may have imported it before it learnt its rank
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

    def get_module_state_dict(self, module: Module) -> dict[str, Any]:
        """The full state dict of `module` (plain, or as `fabric.setup` returned it), keyed as the user's module
        names its entries (no wrapper's prefix), on every rank; a sharding strategy gathers the shards."""
        state_dict: dict[str, Any] = unwrap(module).state_dict()
        return state_dict

    def load_module_state_dict(self, module: Module, state_dict: dict[str, Any], strict: bool = True) -> None:
        """Load a full state dict (as `get_module_state_dict` gives, or a single-process run saved) into `module`;
        a sharding strategy keeps this rank's shards of it. `strict`: as `Module.load_state_dict`'s."""
        unwrap(module).load_state_dict(state_dict, strict=strict)

    def module_to_device(self, module: Module) -> None:
        module.to(self.root_device)

    def module_init_context(self, empty_init: bool | None = None) -> AbstractContextManager[Any]:
        """Where modules are created: on the device, in the precision's dtype; `empty_init` skips the initialisers
        (sharding strategies, and precisions that materialise the model themselves, create on the meta device
        instead)."""
        stack = ExitStack()
        stack.enter_context(self.root_device)
        if empty_init:
            stack.enter_context(torch.device("meta") if self.precision.materializes_meta_modules else SkipInit())
        stack.enter_context(self.precision.module_init_context())
        return stack

    def tensor_init_context(self) -> AbstractContextManager[Any]:
        stack = ExitStack()
        stack.enter_context(self.root_device)
        stack.enter_context(self.precision.tensor_init_context())
        return stack

    def batch_to_device(self, batch: Any, device: torch.device | None = None) -> Any:
        return move_to_device(batch, device or self.root_device)

    def state_layout(self) -> StateLayout:
        """How each rank holds the model's parameters, gradients and optimizer states, for `estimate_memory`
        (`fabric estimate`): here a full copy of each on every rank."""
        return StateLayout()

    # -- data ---------------------------------------------------------------------------------------------------
    @property
    def distributed_sampler_kwargs(self) -> dict[str, int] | None:
        """How `setup_dataloaders` shards data: `{"num_replicas": data-parallel size, "rank": this process's
        data-parallel rank}`, or None where one process sees all the data."""
        return None

    def process_dataloader(self, dataloader: DataLoader[Any]) -> Iterable[Any]:
        """What the loader `setup_dataloaders` returns iterates in each pass, given the user's (sharded) loader:
        the loader itself, or, for a strategy that acts around each batch, an iterable wrapping it that creates the
        loader's iterator when its own is created."""
        return dataloader

    # -- the training step --------------------------------------------------------------------------------------
    def backward(self, tensor: Tensor, module: Module | None, *args: Any, **kwargs: Any) -> None:
        self.precision.backward(tensor, module, *args, **kwargs)

    def discard_backward(self) -> None:
        """An attempt ended between a forward and its backward (an out-of-memory error that every rank agreed on,
        `fabric_kit.out_of_memory`): forget whatever the forwards of the modules this strategy set up prepared for that
        backward, on every rank alike. Nothing is prepared here; DDP and FSDP override it."""

    def out_of_memory_checks(self, check: Callable[[], None]) -> AbstractContextManager[Any]:
        """Entered for each attempt of an `OutOfMemoryAgreement` (`fabric_kit.out_of_memory`): inside, call
        `check` (one flag all-reduce that raises where a peer ran out of memory) before each collective that the
        forwards of the modules set up here run once user code may already have failed on some rank, so that no
        rank waits in one for a peer that left; a strategy that cannot recover from a failed attempt refuses here.
        Nothing to do here: forwards run no collectives. FSDP overrides it."""
        return nullcontext()

    def backward_inside_forward(self, module: Module) -> AbstractContextManager[Any]:
        """A forward of `module` (as this strategy set it up) inside which the loop calls backward itself, e.g. a
        LightningModule's `training_step` calling `manual_backward`. Strategies whose forward arms the gradient
        sync for one backward after it (DDP) make each backward inside sync instead. Default: nothing to do."""
        return nullcontext()

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

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's picklable `obj`, indexed by rank."""
        return [obj]

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        return decision

    # -- checkpoints: one contract, written here; strategies override the pieces that differ ---------------------
    def save_checkpoint(self, path: str, state: dict[str, Any], filter: Filter | None = None) -> None:
        """Save `state` to `path`; every rank must call it.

        The stateful objects become their state dicts (`checkpoint_entries`: where a sharding strategy gathers or
        shards its modules and optimizers), every rank's RNG states and the precision's state (the fp16 loss scale)
        are added under `RESERVED_KEY`, and the format's writer stores the result (`write_entries`)."""
        check_state(state, filter)
        entries = self.checkpoint_entries(state, filter or {})
        entries[RESERVED_KEY] = {"rng": dict(enumerate(self.all_gather_object(self.rng_states()))),
                                 "precision": self.precision.state_dict()}
        self.write_entries(path, entries, state)

    def load_checkpoint(self, path: str, state: dict[str, Any] | None = None, strict: bool = True,
                        weights_only: bool = True) -> dict[str, Any]:
        """Restore the objects of `state` in place from `path`, and with them this rank's RNG states and the
        precision's state; return the checkpoint's entries that `state` did not ask for. With `state` None, return
        every entry and restore nothing. `strict=False` tolerates entries of `state` that the checkpoint lacks.
        `weights_only=False` allows arbitrary pickled objects (only for checkpoints from a trusted source).

        The format's reader reads the entries (`read_entries`), then they are poured into the objects
        (`restore_entries`: where a sharding strategy slices full state into its shards)."""
        if state is not None and not isinstance(state, dict):
            raise TypeError(f"the state to load into must be a dict of the objects to restore, e.g. {{'model': "
                            f"model, 'optimizer': optimizer}}, or None to read the entries; got "
                            f"{type(state).__name__}. A file holding one object's state dict loads with "
                            "`fabric.load_raw(path, obj)`")
        entries = self.read_entries(path, state, strict, weights_only)
        if not isinstance(entries, dict):
            raise TypeError(f"checkpoint {path!r} holds a {type(entries).__name__}, not a dict of entries; "
                            "load it into one module or optimizer with `fabric.load_raw(path, obj)`")
        own = entries.pop(RESERVED_KEY, None)
        if state is None:
            return entries
        remainder = self.restore_entries(state, entries, strict)
        if own is not None:
            self.precision.load_state_dict(own.get("precision", {}))
            self.restore_rng_states(own["rng"])
        return remainder

    def load_raw(self, path: str, obj: Module | Optimizer, strict: bool = True) -> None:
        """Load a file holding one object's plain state dict (`torch.save(model.state_dict(), path)`) into a module
        or optimizer (also one returned by `fabric.setup`), through `restore_entries`, so a sharded object takes
        its shards of it. Read safely: tensors and plain containers only."""
        if not isinstance(unwrap(obj), (Module, Optimizer)):
            raise TypeError(f"load_raw loads into a torch.nn.Module or torch.optim.Optimizer (plain or returned by "
                            f"fabric.setup); got {type(obj).__name__}. To restore several objects from a "
                            "checkpoint, use `fabric.load(path, {'model': model, ...})`")
        self.restore_entries({_RAW: obj}, {_RAW: self.checkpoint_io.load_checkpoint(path, weights_only=True)}, strict)

    def checkpoint_entries(self, state: dict[str, Any], filter: Filter) -> dict[str, Any]:
        """What is stored for each entry of `state`: the state dict of a stateful object, a plain value as it is.
        Overridden where modules and optimizers have another layout (shards, device tensors copied to the CPU)."""
        return to_storable(state, filter)

    def write_entries(self, path: str, entries: dict[str, Any], state: dict[str, Any]) -> None:
        """Store `entries` at `path` in this strategy's format; called on every rank. Here: one file, written by
        rank 0 through `checkpoint_io`. `state` holds the user's objects, for a format that an object writes itself
        (DeepSpeed's engine)."""
        if self.is_global_zero:
            self.checkpoint_io.save_checkpoint(entries, path)

    def read_entries(self, path: str, state: dict[str, Any] | None, strict: bool, weights_only: bool) -> Any:
        """The entries stored at `path` (with `RESERVED_KEY`), read in this strategy's format on every rank. Here:
        one file. `state` holds the objects to restore, for a format read into them (DCP shards, DeepSpeed's
        engine)."""
        return self.checkpoint_io.load_checkpoint(path, weights_only=weights_only)

    def restore_entries(self, state: dict[str, Any], entries: dict[str, Any], strict: bool) -> dict[str, Any]:
        """Pour `entries` into the objects of `state` in place (plain values are replaced in `state`); return the
        entries `state` did not ask for. With `strict`, an entry of `state` missing from `entries` is a KeyError."""
        return restore_into(state, entries, strict=strict)

    def rng_states(self) -> dict[str, Any]:
        """This process's random generators' states, saved for every rank."""
        return rng.capture()

    def restore_rng_states(self, states: dict[int, dict[str, Any]]) -> None:
        """Restore this rank's generators from every rank's saved `rng_states`."""
        rng.for_rank(states, self.global_rank)

    def teardown(self) -> None:
        """Release the accelerator and the checkpoint plugin (an `AsyncCheckpointIO` waits for its saves)."""
        if self._checkpoint_io is not None:
            self._checkpoint_io.teardown()
        if self.accelerator is not None:
            self.accelerator.teardown()


_RAW = "state_dict"
"""The entry name `load_raw` gives the one object it restores (errors about it name this)."""


def _optimizer_parameters(optimizer: Optimizer) -> Iterable[Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


class BackwardSyncControl(ABC):
    """A strategy that can skip the gradient all-reduce for some backward passes (gradient accumulation)."""

    @abstractmethod
    def no_backward_sync(self, module: Module, enabled: bool) -> AbstractContextManager[Any]: ...

    def accumulation_context(self, module: Module, sync: bool) -> AbstractContextManager[Any]:
        """The context of one micro-batch of `fabric.accumulate`: its backward all-reduces the gradients only when
        it ends the window (`sync`). A strategy whose engine accumulates itself (DeepSpeed) overrides this."""
        return self.no_backward_sync(module, enabled=not sync)


class ForwardBackwardControl(ABC):
    """A strategy that runs some models' forward and backward together (a pipeline schedule), so that
    `fabric.forward_backward` hands it the batch instead of calling the model and `backward`."""

    @abstractmethod
    def runs_forward_backward(self, module: Module) -> bool:
        """Whether `forward_backward` must run for this set-up module (it cannot be called on its own)."""

    @abstractmethod
    def forward_backward(self, module: Module, inputs: tuple[Any, ...], target: Any,
                         loss_fn: Callable[..., Tensor]) -> Tensor:
        """Forward and backward of one batch; returns its mean loss, detached, on every rank."""
