"""XLA strategies: `single_xla` (one process, one XLA device) and `xla` (one process per device of the host,
started by torch_xla's PJRT launcher, gradients all-reduced in the optimizer step).

XLA tensors are lazy: operations record a graph that runs when it is cut (`torch_xla.sync()`, done by the
dataloader wrapper after each batch) or when a value is read. Checkpoints are therefore synced and copied to the
CPU before rank 0 writes them with fabric_kit's own atomic writer, so they load anywhere, without torch_xla; they
hold every rank's RNG states (the XLA device's generator included) and the precision's state, as on any device."""
from __future__ import annotations

import os
import pickle
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor
from torch.nn import Module
from torch.optim import Optimizer
from torch.utils.data import DataLoader
from torch.utils.weak import WeakIdKeyDictionary

from fabric_kit.accelerators import Accelerator
from fabric_kit.accelerators.xla import import_torch_xla
from fabric_kit.checkpoint.state import Filter
from fabric_kit.collections import apply_to_collection
from fabric_kit.environments import ClusterEnvironment
from fabric_kit.precision import Precision
from fabric_kit.strategies.launchers.xla import XLALauncher
from fabric_kit.strategies.parallel import ParallelStrategy, StartMethod
from fabric_kit.strategies.single_device import SingleDeviceStrategy
from fabric_kit.strategies.strategy import Strategy


def check_xla_device(strategy_name: str, device: torch.device) -> None:
    if device.type != "xla":
        raise ValueError(f"strategy {strategy_name!r} runs on XLA devices, but its device is {device}; use "
                         "Fabric(accelerator='xla') (alias 'tpu')")


class RelinkOptimizerParameters(Strategy):
    """Moving a module to an XLA device creates new Parameter objects (CPU and XLA tensors cannot share one), so
    an optimizer built before `fabric.setup` would keep updating the stale CPU copies. The move records old ->
    new, and `setup_optimizer` points the optimizer's param groups at the moved parameters."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._moved = WeakIdKeyDictionary()  # keyed by identity: tensors have no usable ==

    def module_to_device(self, module: Module) -> None:
        before = dict(module.named_parameters(remove_duplicate=False))
        module.to(self.root_device)
        after = dict(module.named_parameters(remove_duplicate=False))
        self._moved.update({param: after[name] for name, param in before.items() if after[name] is not param})

    def setup_optimizer(self, optimizer: Optimizer) -> Optimizer:
        for group in optimizer.param_groups:
            group["params"] = [self._moved.get(p, p) for p in group["params"]]
        return optimizer


class GraphCuts:
    """Cuts of the lazy graph that fabric_kit makes (`torch_xla.sync()`), counted. The loader cuts after each batch's
    step, and a checkpoint cuts before it copies tensors off the device; a save after a step has then run that
    step's graph, and the loader skips its cut. Each cut advances the XLA device's random generator, so a second one
    would make a run that saved draw other dropout masks than one that resumes from the checkpoint or never saved.
    (A save between epochs, where no cut is owed, still adds one: the saving run and a run resumed from it then
    agree with each other, not with a run that never saved.)"""

    def __init__(self) -> None:
        self.count = 0

    def cut(self) -> None:
        import_torch_xla().sync()
        self.count += 1

    def after_each_batch(self, dataloader: DataLoader[Any]) -> Iterable[Any]:
        """`dataloader`'s batches, with a cut once the loop body is done with each, unless it cut meanwhile."""
        return _CutAfterEachBatch(dataloader, self)


class _CutAfterEachBatch:
    def __init__(self, dataloader: DataLoader[Any], cuts: GraphCuts) -> None:
        self._dataloader = dataloader
        self._cuts = cuts

    def __iter__(self) -> Iterator[Any]:
        return self._cut_after_each(iter(self._dataloader))  # the loader's iterator now, not at the first batch

    def _cut_after_each(self, batches: Iterator[Any]) -> Iterator[Any]:
        for batch in batches:
            owed = self._cuts.count
            yield batch
            if self._cuts.count == owed:
                self._cuts.cut()


class XLALazyGraph(Strategy):
    """What both XLA strategies share about the lazy graph. It is cut once per step: after the loop body is done
    with each batch (`process_dataloader`), or before, by a checkpoint saved in the body. Saving runs the pending
    graph once on every rank (the same graph must run everywhere) and copies the state's tensors to the CPU, so the
    files load anywhere, without torch_xla; the XLA device's random generator is saved and restored with the
    host's, so dropout on the device resumes bit-exactly too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.graph_cuts = GraphCuts()

    def process_dataloader(self, dataloader: DataLoader[Any]) -> Iterable[Any]:
        return self.graph_cuts.after_each_batch(dataloader)

    def checkpoint_entries(self, state: dict[str, Any], filter: Filter) -> dict[str, Any]:
        self.graph_cuts.cut()  # one graph execution, instead of one per tensor copied; the loader then skips its own
        entries: dict[str, Any] = apply_to_collection(super().checkpoint_entries(state, filter), Tensor,
                                                      lambda t: t.detach().cpu())
        return entries

    def rng_states(self) -> dict[str, Any]:
        return {**super().rng_states(), "xla": _xm().get_rng_state()}

    def restore_rng_states(self, states: dict[int, dict[str, Any]]) -> None:
        super().restore_rng_states(states)
        own = states.get(self.global_rank)
        if own is None:  # a rank the checkpoint lacks: derive the device's seed as the host's was derived
            _xm().set_rng_state(torch.initial_seed())
        elif "xla" in own:
            _xm().set_rng_state(own["xla"])


class SingleXLAStrategy(XLALazyGraph, RelinkOptimizerParameters, SingleDeviceStrategy):
    """One process on one XLA device (`xla:0`, or the index passed as `devices=[i]`)."""

    def setup_environment(self) -> None:
        check_xla_device("single_xla", self.root_device)
        super().setup_environment()


class XLAStrategy(XLALazyGraph, RelinkOptimizerParameters, ParallelStrategy):
    """One process per XLA device, replicas kept equal by broadcasting rank 0's parameters at setup and averaging
    gradients in `optimizer.step()` (`xm.optimizer_step`). Ranks come from the PJRT runtime once launched.

    `devices` is 1 or every device of the host: PJRT cannot start a subset."""

    def __init__(self, accelerator: Accelerator | None = None, parallel_devices: list[torch.device] | None = None,
                 cluster_environment: ClusterEnvironment | None = None, precision: Precision | None = None,
                 sync_module_states: bool = True, start_method: StartMethod = "spawn") -> None:
        super().__init__(accelerator, parallel_devices, cluster_environment, precision, start_method=start_method)
        self.sync_module_states = sync_module_states
        self._launched = False

    def configure_launcher(self) -> None:
        """Called by the connector once the accelerator and devices are known."""
        if self.accelerator is None or self.accelerator.name != "xla":
            raise ValueError(f"strategy {type(self).__name__} runs on XLA devices; use Fabric(accelerator='xla') "
                             f"(alias 'tpu'), not {getattr(self.accelerator, 'name', None)!r}")
        self.launcher = XLALauncher(self.num_processes, self.start_method)

    @property
    def root_device(self) -> torch.device:
        if not self._launched:
            # Touching the XLA runtime in the parent would make torch_xla refuse to spawn the ranks.
            raise RuntimeError(f"strategy {type(self).__name__} knows its device only inside the launched "
                               "processes: call `fabric.launch(fn)` first")
        device: torch.device = import_torch_xla().device()
        return device

    @property
    def global_rank(self) -> int:
        return _runtime().global_ordinal() if self._launched else 0

    @property
    def local_rank(self) -> int:
        return _runtime().local_ordinal() if self._launched else 0

    @property
    def world_size(self) -> int:
        return _runtime().world_size() if self._launched else self.num_processes * self.num_nodes

    @property
    def node_rank(self) -> int:
        return self.global_rank // max(1, self.num_processes) if self._launched else 0

    def setup_environment(self) -> None:
        """Run in each launched process: learn the rank from PJRT and export it, so rank-zero-only helpers agree."""
        self._launched = True
        check_xla_device(type(self).__name__, self.root_device)
        os.environ["RANK"] = str(self.global_rank)
        os.environ["LOCAL_RANK"] = str(self.local_rank)
        os.environ["WORLD_SIZE"] = str(self.world_size)
        if self.accelerator is not None:
            self.accelerator.setup_device(self.root_device)

    def setup_module(self, module: Module) -> Module:
        if self.sync_module_states and self.world_size > 1:
            _xm().broadcast_master_param(module)
        return module

    def optimizer_step(self, optimizer: Optimizer, **kwargs: Any) -> Any:
        """Average the gradients over the replicas, then step. A closure runs first, so the gradients it computes
        are the ones reduced (fine for optimizers that evaluate it once, such as SGD and Adam; not for LBFGS)."""
        closure = kwargs.pop("closure", None)
        if closure is not None:
            closure()
        return _xm().optimizer_step(optimizer, optimizer_args=kwargs)

    # -- collectives through XLA's own ops (no torch.distributed process group) -----------------------------------
    def all_reduce(self, tensor: Tensor, group: Any = None, reduce_op: str | Any = "mean") -> Tensor:
        if self.world_size == 1:
            return tensor
        op = str(reduce_op).lower().split(".")[-1]
        if op not in ("sum", "mean", "avg", "max", "min"):
            raise ValueError(f"reduce_op={reduce_op!r} is not supported on XLA; accepted: sum, mean, max, min")
        xm = _xm()
        reduced: Tensor = xm.all_reduce(op if op in ("max", "min") else "sum", tensor.to(self.root_device))
        return reduced / self.world_size if op in ("mean", "avg") else reduced

    def all_gather(self, tensor: Tensor, group: Any = None, sync_grads: bool = False) -> Tensor:
        """Stack every rank's `tensor` along a new first dimension of size world_size."""
        if self.world_size == 1:
            return tensor
        stacked = tensor.to(self.root_device).unsqueeze(0)
        if sync_grads:
            from torch_xla.core.functions import all_gather as differentiable_all_gather

            gathered: Tensor = differentiable_all_gather(stacked)
        else:
            gathered = _xm().all_gather(stacked)
        return gathered

    def barrier(self, name: str | None = None) -> None:
        if self._launched and self.world_size > 1:
            _xm().rendezvous(name or "fabric_kit.barrier")

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        """Pickle on `src`, send the length, then the bytes padded to that length (collectives need equal shapes)."""
        if self.world_size == 1:
            return obj
        xm = _xm()
        payload = pickle.dumps(obj) if self.global_rank == src else b""
        length = torch.tensor([len(payload)], dtype=torch.int64, device=self.root_device)
        xm.collective_broadcast([length], root_ordinal=src)
        buffer = torch.zeros(int(length.item()), dtype=torch.uint8)
        if payload:
            buffer.copy_(torch.frombuffer(bytearray(payload), dtype=torch.uint8))
        buffer = buffer.to(self.root_device)
        xm.collective_broadcast([buffer], root_ordinal=src)
        return pickle.loads(buffer.cpu().numpy().tobytes())

    def teardown(self) -> None:
        if self.accelerator is not None:
            self.accelerator.teardown()


def _xm() -> Any:
    import_torch_xla()
    import torch_xla.core.xla_model as xm

    return xm


def _runtime() -> Any:
    import_torch_xla()
    import torch_xla.runtime as xr

    return xr
