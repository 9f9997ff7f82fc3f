"""`xla_fsdp`: parameters, gradients and optimizer state sharded over the XLA devices with torch_xla's
`XlaFullyShardedDataParallel`. Gradients are reduce-scattered during backward, so the optimizer step only steps.

Wrapping replaces the module's parameters by shards, so an optimizer must be built from the wrapped module's
parameters: set up the module first, then the optimizer. Checkpoints are sharded too: `path` becomes a directory
with one file per rank, holding that rank's shards and the metadata torch_xla needs to consolidate them."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable
from weakref import WeakKeyDictionary

import torch
from torch import Tensor
from torch.nn import Module
from torch.optim import Optimizer

from fabric_kit.accelerators import Accelerator
from fabric_kit.accelerators.xla import import_torch_xla
from fabric_kit.checkpoint.io import load_file, save_file
from fabric_kit.checkpoint.state import restore_into, unwrap
from fabric_kit.environments import ClusterEnvironment
from fabric_kit.precision import Precision
from fabric_kit.strategies.xla import XLAStrategy, storable_on_cpu


class XLAFSDPStrategy(XLAStrategy):
    """Extra keyword arguments go to `XlaFullyShardedDataParallel` (e.g. `auto_wrap_policy`, `compute_dtype`)."""

    setup_module_first = True

    def __init__(self, accelerator: Accelerator | None = None, parallel_devices: list[torch.device] | None = None,
                 cluster_environment: ClusterEnvironment | None = None, precision: Precision | None = None,
                 start_method: str = "spawn", **fsdp_kwargs: Any) -> None:
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
        wrapper = self._wrappers.get(unwrap(module))
        if wrapper is None:
            raise TypeError("clip_gradients with 'xla_fsdp' needs the module returned by fabric.setup_module()")
        return wrapper.clip_grad_norm_(max_norm, norm_type)

    def save_checkpoint(self, path: str, state: dict[str, Any],
                        filter: dict[str, Callable[[str, Any], bool]] | None = None) -> None:
        """Every rank writes its own shard file under the directory `path`."""
        import_torch_xla().sync()
        state = self._with_wrappers(state)
        storable = storable_on_cpu(state, filter)
        storable["shard_metadata"] = {key: module.get_shard_metadata() for key, module in state.items()
                                      if hasattr(module, "get_shard_metadata")}
        save_file(storable, self._shard_file(path))

    def load_checkpoint(self, path: str, state: dict[str, Any] | Module | Optimizer | None = None,
                        strict: bool = True) -> dict[str, Any]:
        shard = self._shard_file(path)
        if not shard.exists():
            raise FileNotFoundError(f"{str(path)!r} holds no shard {shard.name!r}: load an 'xla_fsdp' checkpoint "
                                    "with the number of processes that wrote it")
        checkpoint = load_file(shard)
        checkpoint.pop("shard_metadata", None)
        if state is None:
            return checkpoint
        if not isinstance(state, dict):
            restore_into(self._with_wrappers({"_": state}), {"_": checkpoint}, strict=strict)
            return {}
        targets = self._with_wrappers(state)
        remainder = restore_into(targets, checkpoint, strict=strict)
        for key, value in targets.items():
            if not isinstance(value, Module):
                state[key] = value  # plain values that restore_into replaced in the copy
        return remainder

    def _shard_file(self, path: str) -> Path:
        return Path(path) / f"shard-{self.global_rank:05d}-of-{self.world_size:05d}.ckpt"

    def _with_wrappers(self, state: dict[str, Any]) -> dict[str, Any]:
        """`state` with each set-up module replaced by its FSDP wrapper (whose state dict holds the shards)."""
        return {key: self._wrappers.get(unwrap(value), value) if isinstance(value, Module) else value
                for key, value in state.items()}
