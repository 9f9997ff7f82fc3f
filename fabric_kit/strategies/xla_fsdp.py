"""`xla_fsdp`: parameters, gradients and optimizer state sharded over the XLA devices with torch_xla's
`XlaFullyShardedDataParallel`. Gradients are reduce-scattered during backward, so the optimizer step only steps.

Wrapping replaces the module's parameters by shards, so an optimizer must be built from the wrapped module's
parameters: set up the module first, then the optimizer. Checkpoints are sharded too: `path` becomes a directory
with one file per rank, holding that rank's shards and the metadata torch_xla needs to consolidate them, next to
every rank's RNG states and the precision's state."""
from __future__ import annotations

from pathlib import Path
from typing import Any
from weakref import WeakKeyDictionary

import torch
from torch import Tensor
from torch.nn import Module
from torch.optim import Optimizer

from fabric_kit.accelerators import Accelerator
from fabric_kit.accelerators.xla import import_torch_xla
from fabric_kit.checkpoint.io import load_file, save_file
from fabric_kit.checkpoint.state import Filter
from fabric_kit.environments import ClusterEnvironment
from fabric_kit.memory_estimate import StateLayout
from fabric_kit.precision import Precision
from fabric_kit.strategies.parallel import StartMethod
from fabric_kit.strategies.xla import XLAStrategy
from fabric_kit.wrappers import unwrap

SHARD_METADATA = "shard_metadata"
"""The entry of each shard file with the wrappers' `get_shard_metadata()`, where torch_xla's consolidation looks."""


class XLAFSDPStrategy(XLAStrategy):
    """Extra keyword arguments go to `XlaFullyShardedDataParallel` (e.g. `auto_wrap_policy`, `compute_dtype`)."""

    setup_module_first = True
    shards_parameters = True

    def __init__(self, accelerator: Accelerator | None = None, parallel_devices: list[torch.device] | None = None,
                 cluster_environment: ClusterEnvironment | None = None, precision: Precision | None = None,
                 start_method: StartMethod = "spawn", **fsdp_kwargs: Any) -> None:
        # No broadcast of rank 0's parameters: each rank keeps only its shard.
        super().__init__(accelerator, parallel_devices, cluster_environment, precision, sync_module_states=False,
                         start_method=start_method)
        self.fsdp_kwargs = fsdp_kwargs
        # The user's module -> its wrapper: checkpoints must read and write the wrapper's sharded state dict.
        self._wrappers: WeakKeyDictionary[Module, Module] = WeakKeyDictionary()

    def setup_module_and_optimizers(self, module: Module, optimizers: list[Optimizer],
                                    scheduler: Any = None) -> tuple[Module, list[Optimizer], Any]:
        raise RuntimeError("strategy 'xla_fsdp' replaces the model's parameters by shards when it wraps it, so an "
                           "optimizer made before would update nothing: call `model = fabric.setup_module(model)`, "
                           "then build the optimizer from `model.parameters()` and call "
                           "`fabric.setup_optimizers(optimizer)`")

    def state_layout(self) -> StateLayout:
        """torch_xla's FSDP flattens the parameters and pads and cuts them evenly over the ranks, and with them
        the gradients and optimizer states."""
        return StateLayout("flat", "flat", "flat")

    def module_to_device(self, module: Module) -> None:
        """Nothing: the wrapper moves each shard to the device, so the full model never has to fit on one."""

    def setup_module(self, module: Module) -> Module:
        from torch_xla.distributed.fsdp import XlaFullyShardedDataParallel

        if any(isinstance(m, XlaFullyShardedDataParallel) for m in module.modules()):
            wrapped = module  # the user wrapped (parts of) it already
        else:
            wrapped = XlaFullyShardedDataParallel(module, **self.fsdp_kwargs)
        self._wrappers[module] = wrapped
        return wrapped

    def setup_optimizer(self, optimizer: Optimizer) -> Optimizer:
        unsharded = [tuple(p.shape) for group in optimizer.param_groups for p in group["params"]
                     if not getattr(p, "_is_sharded", False)]
        if unsharded:
            raise ValueError(f"the optimizer holds {len(unsharded)} parameter(s) that are not XLA FSDP shards (shapes "
                             f"{unsharded[:3]}...): build it from the parameters of the module returned by "
                             "`fabric.setup_module(model)`")
        return optimizer

    def optimizer_step(self, optimizer: Optimizer, **kwargs: Any) -> Any:
        result = self.precision.optimizer_step(optimizer, **kwargs)
        # Cut the graph at the step, as torch_xla's FSDP examples do: gathered full parameters can then be freed.
        import_torch_xla().sync()
        return result

    def clip_gradients_norm(self, module: Module, optimizer: Optimizer, max_norm: float, norm_type: float = 2.0,
                            error_if_nonfinite: bool = True) -> Tensor:
        """The norm over all shards, from the wrapper: each rank sees only its shard of every gradient."""
        wrapper: Any = self._wrappers.get(module, module)  # the wrapper itself, or the user's module it wraps
        if wrapper not in self._wrappers.values():
            raise TypeError("clip_gradients with 'xla_fsdp' needs the module returned by fabric.setup_module()")
        norm: Tensor = wrapper.clip_grad_norm_(max_norm, norm_type)
        return norm

    # -- checkpoints: a directory with one file per rank ---------------------------------------------------------
    def checkpoint_entries(self, state: dict[str, Any], filter: Filter) -> dict[str, Any]:
        """This rank's shards (the wrappers' state dicts, on the CPU) and the metadata torch_xla consolidates
        them with."""
        wrapped = self._with_wrappers(state)
        entries = super().checkpoint_entries(wrapped, filter)
        entries[SHARD_METADATA] = {key: module.get_shard_metadata() for key, module in wrapped.items()
                                   if hasattr(module, "get_shard_metadata")}
        return entries

    @property
    def uses_checkpoint_io(self) -> bool:
        return False  # a directory of one shard file per rank

    def write_entries(self, path: str, entries: dict[str, Any], state: dict[str, Any]) -> None:
        save_file(entries, self._shard_file(path))

    def read_entries(self, path: str, state: dict[str, Any] | None, strict: bool, weights_only: bool) -> Any:
        shard = self._shard_file(path)
        if not shard.exists():
            raise FileNotFoundError(f"{str(path)!r} holds no shard {shard.name!r}: load an 'xla_fsdp' checkpoint "
                                    "with the number of processes that wrote it")
        entries = load_file(shard, weights_only=weights_only)
        entries.pop(SHARD_METADATA, None)
        return entries

    def restore_entries(self, state: dict[str, Any], entries: dict[str, Any], strict: bool) -> dict[str, Any]:
        targets = self._with_wrappers(state)
        remainder = super().restore_entries(targets, entries, strict)
        for key, value in targets.items():
            if not isinstance(value, Module):
                state[key] = value  # plain values that restore_into replaced in the copy
        return remainder

    def load_raw(self, path: str, obj: Module | Optimizer, strict: bool = True) -> None:
        raise RuntimeError(f"load_raw({str(path)!r}) cannot load a plain state dict under 'xla_fsdp': the wrapped "
                           "model holds flattened shards, not the named parameters such a file has. Load it into "
                           "the model before `fabric.setup_module(model)`: "
                           "`model.load_state_dict(torch.load(path))`")

    def _shard_file(self, path: str) -> Path:
        return Path(path) / f"shard-{self.global_rank:05d}-of-{self.world_size:05d}.ckpt"

    def _with_wrappers(self, state: dict[str, Any]) -> dict[str, Any]:
        """`state` with each set-up module replaced by its FSDP wrapper (whose state dict holds the shards)."""
        return {key: self._wrappers.get(unwrap(value), value) if isinstance(value, Module) else value
                for key, value in state.items()}
