"""The facade a training script talks to. It holds no distribution logic of its own: each call asks the strategy,
which owns distribution and delegates to precision and checkpoint I/O."""
from __future__ import annotations

import signal
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import Tensor
from torch.nn import Module
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from fabric_kit.accelerators import Accelerator
from fabric_kit.accumulation import Accumulation
from fabric_kit.callbacks import call_hooks
from fabric_kit.collections import apply_to_collection, move_to_device
from fabric_kit.connector import Connector
from fabric_kit.data import distributed_loader, resumable_loader
from fabric_kit.precision import Precision
from fabric_kit.preemption import Preemption
from fabric_kit.profiling import torch_profiler
from fabric_kit.repointing import parameter_names, repoint_optimizer
from fabric_kit.seed import global_seed, seed_everything, worker_init_function
from fabric_kit.strategies.strategy import BackwardSyncControl, ForwardBackwardControl, Strategy
from fabric_kit.wrappers import (
    FabricDataLoader,
    FabricModule,
    FabricOptimizer,
    split_compiled,
    unwrap,
    wrap_optimizer,
)

if TYPE_CHECKING:
    from torch.profiler import profile as TorchProfile

    from fabric_kit.out_of_memory import OutOfMemoryAgreement

T = TypeVar("T")


class Fabric:
    """Run a plain PyTorch loop on any device, process count and precision.

    Args:
        accelerator: "cpu", "cuda" (alias "gpu"), "mps" or "auto" (the best available), or an Accelerator.
        strategy: "auto", "single_device", "ddp", "ddp_spawn", "ddp_fork", "ddp_notebook",
            "ddp_find_unused_parameters_true", ... (`fabric_kit.strategies.strategy_names()`), or a Strategy.
        devices: number of devices (processes on CPU), a list of device indices, "0,1", or "auto".
        num_nodes: number of machines.
        precision: "32-true", "64-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "fp8" (aliases 32, 64, 16,
            "bf16"), or a Precision plugin instance (`fabric_kit.plugins.precision`).
        plugins: a Precision or ClusterEnvironment instance (or a list of them, at most one of each kind) overriding
            the automatic choice; a Precision plugin together with `precision=` is an error.
        callbacks: objects whose methods `fabric.call(hook_name, ...)` invokes.
        loggers: objects with `log_metrics(metrics, step)` used by `fabric.log` / `log_dict`.
        collective_timeout: seconds (or a timedelta) a process may wait inside one collective before the job ends
            with an error naming the ranks, operations and source lines (`fabric_kit.watchdog`); None: `fabric run
            --collective-timeout`, FABRIC_KIT_COLLECTIVE_TIMEOUT or 10 minutes; 0: no watchdog.
        preemption: which signals set `fabric.preempted` and how often the ranks agree on it
            (`fabric_kit.preemption.Preemption`); default SIGTERM (and SIGUSR1 under SLURM), every 10 reads.
    """

    def __init__(self, *, accelerator: str | Accelerator = "auto", strategy: str | Strategy = "auto",
                 devices: int | str | list[int] = "auto", num_nodes: int = 1,
                 precision: str | int | Precision | None = None,
                 plugins: Any = None, callbacks: Any = None, loggers: Any = None,
                 collective_timeout: float | timedelta | None = None, preemption: Preemption | None = None) -> None:
        connector = Connector(accelerator, strategy, devices, num_nodes, precision, plugins, collective_timeout)
        self._strategy: Strategy = connector.strategy
        self._accelerator: Accelerator = connector.accelerator
        self._num_nodes = connector.num_nodes
        self._callbacks = _as_list(callbacks)
        self._loggers = _as_list(loggers)
        self._preemption = preemption or Preemption()
        self._launched = False
        self._oom_agreement: OutOfMemoryAgreement | None = None  # open while an attempt may run out of memory

    # -- where this process sits ----------------------------------------------------------------------------------
    @property
    def accelerator(self) -> Accelerator:
        return self._accelerator

    @property
    def strategy(self) -> Strategy:
        return self._strategy

    @property
    def precision(self) -> Precision:
        """The resolved Precision plugin; its `name` is the setting, e.g. "bf16-mixed"."""
        return self._strategy.precision

    @property
    def setup_module_first(self) -> bool:
        """Whether optimizers must be created after `setup_module(model)`, from its (sharded) parameters, and set up
        with `setup_optimizers` (FSDP); otherwise `setup(model, *optimizers)` takes them together."""
        return self._strategy.setup_module_first

    @property
    def device(self) -> torch.device:
        return self._strategy.root_device

    @property
    def global_rank(self) -> int:
        return self._strategy.global_rank

    @property
    def local_rank(self) -> int:
        return self._strategy.local_rank

    @property
    def node_rank(self) -> int:
        return self._strategy.node_rank

    @property
    def world_size(self) -> int:
        return self._strategy.world_size

    @property
    def num_nodes(self) -> int:
        """Number of machines the job runs on."""
        return self._num_nodes

    @property
    def is_global_zero(self) -> bool:
        return self._strategy.is_global_zero

    @property
    def preempted(self) -> bool:
        """Whether a preemption signal (SIGTERM by default) reached any rank, agreed by all ranks; read it on every
        rank at the same point of each step, save there and stop (see `fabric_kit.preemption`). The first read
        makes the signals set this flag instead of ending the process."""
        return self._preemption.preempted(self._strategy)

    @property
    def preemption_signal(self) -> signal.Signals | None:
        """The preemption signal this process received (None: none, or another rank's made `preempted` True): lets a
        script tell SLURM's warning before the time limit (SIGUSR1, worth a requeue) from a cancellation (SIGTERM)."""
        return self._preemption.received

    @property
    def loggers(self) -> list[Any]:
        return self._loggers

    @property
    def logger(self) -> Any:
        return self._loggers[0] if self._loggers else None

    # -- processes ------------------------------------------------------------------------------------------------
    def launch(self, function: Callable[..., Any] | None = None, *args: Any, **kwargs: Any) -> Any:
        """Start the processes the strategy needs (unless torchrun, SLURM or `fabric run` already did) and join the
        process group; then run `function(fabric, *args, **kwargs)` if given. Calling it again is harmless."""
        launcher = self._strategy.launcher
        if self._launched:
            return function(self, *args, **kwargs) if function is not None else None
        if function is None and launcher is not None and not launcher.reruns_script:
            raise TypeError(f"strategy {type(self._strategy).__name__} starts fresh processes with "
                            f"{type(launcher).__name__}: pass the function to run, "
                            "`fabric.launch(train)`, where `def train(fabric): ...`")
        if launcher is None:
            return self._run_launched(function, *args, **kwargs)
        return launcher.launch(self._run_launched, function, *args, **kwargs)

    def _run_launched(self, function: Callable[..., Any] | None, *args: Any, **kwargs: Any) -> Any:
        self._launched = True
        self._strategy.setup_environment()
        return function(self, *args, **kwargs) if function is not None else None

    def _ensure_launched(self) -> None:
        if self._launched:
            return
        if self._strategy.launcher is not None:
            raise RuntimeError(f"{type(self._strategy).__name__} runs {self.world_size} processes: call "
                               "`fabric.launch()` before setting up models, dataloaders or using collectives")
        self._run_launched(None)

    # -- setup ----------------------------------------------------------------------------------------------------
    def setup(self, module: Module, *optimizers: Optimizer, scheduler: Any = None,
              move_to_device: bool = True) -> Any:
        """Prepare a model and its optimizers for the strategy; returns `model`, or `(model, *optimizers)`
        (with the scheduler last when one is passed)."""
        self._ensure_launched()
        module, recompile = split_compiled(module)  # compiled again around the strategy's module
        names = parameter_names(module)
        module = self._prepare_module(module, move_to_device)
        for optimizer in optimizers:
            _check_unwrapped_optimizer(optimizer)
            repoint_optimizer(optimizer, names, module)  # a precision may have replaced parameters (float8 weights)
        forward_module, raw_optimizers, scheduler = self._strategy.setup_module_and_optimizers(
            module, list(optimizers), scheduler)
        wrapped = FabricModule(forward_module, self._strategy.precision, module, recompile,
                               self._strategy.shards_parameters)
        fabric_optimizers = [wrap_optimizer(opt, self._strategy, self._callbacks) for opt in raw_optimizers]
        self._after_setup(module, wrapped, fabric_optimizers)
        result = [wrapped, *fabric_optimizers]
        if scheduler is not None:
            result.append(scheduler)
        return result[0] if len(result) == 1 else tuple(result)

    def setup_module(self, module: Module, move_to_device: bool = True) -> FabricModule:
        """Prepare only the model (sharding strategies want the model first, then `setup_optimizers`)."""
        self._ensure_launched()
        module, recompile = split_compiled(module)
        module = self._prepare_module(module, move_to_device)
        wrapped = FabricModule(self._strategy.setup_module(module), self._strategy.precision, module, recompile,
                               self._strategy.shards_parameters)
        self._after_setup(module, wrapped, None)
        return wrapped

    def setup_optimizers(self, *optimizers: Optimizer) -> FabricOptimizer | tuple[FabricOptimizer, ...]:
        self._ensure_launched()
        wrapped = []
        for optimizer in optimizers:
            _check_unwrapped_optimizer(optimizer)
            wrapped.append(wrap_optimizer(self._strategy.setup_optimizer(optimizer), self._strategy, self._callbacks))
        return wrapped[0] if len(wrapped) == 1 else tuple(wrapped)

    def _after_setup(self, module: Module, wrapped: FabricModule, optimizers: list[FabricOptimizer] | None) -> None:
        """A module with `attach_fabric(fabric, optimizers)` (a loops LightningModule; None from `setup_module`) is
        told, and becomes a callback, as in Lightning; then the callbacks' `on_after_setup(fabric, module)` run."""
        attach = getattr(module, "attach_fabric", None)
        if callable(attach):
            attach(self, optimizers)
            if module not in self._callbacks:
                self._callbacks.append(module)
        call_hooks(self._callbacks, "on_after_setup", (), {"fabric": self, "module": wrapped})

    def _prepare_module(self, module: Module, move_to_device: bool) -> Module:
        # The user's module may be set up again (`setup(model)`, then `setup(model, optimizer)`), as in Lightning.
        if isinstance(module, FabricModule):
            raise ValueError(f"module {type(unwrap(module)).__name__} is already the one `setup` returned; pass "
                             "the model itself to `setup`")
        module = self._strategy.precision.convert_module(module)
        if move_to_device:
            self._strategy.module_to_device(module)
        return module

    def setup_dataloaders(self, *dataloaders: DataLoader[Any], use_distributed_sampler: bool = True,
                          move_to_device: bool = True, even_shards: bool = True) -> Any:
        """Give each process its shard of every loader and move batches to the device.

        Shuffling follows `(seed, epoch)` (the seed of `seed_everything`, else 0), also on one process, so the
        returned loaders can be saved in a checkpoint and resumed mid-epoch (see `FabricDataLoader`). After
        `seed_everything(workers=True)` a loader without a `worker_init_fn` gets one seeding each worker process
        differently per worker and rank, reproducibly (`fabric_kit.seed.seed_worker`; set on the loader itself
        when it is not rebuilt).

        `even_shards=False` (for evaluation) gives each sample to exactly one process with no padding duplicates,
        so a metric summed over processes counts every sample once; processes may then get one batch fewer.
        """
        if not dataloaders:
            raise ValueError("setup_dataloaders needs at least one DataLoader; got none")
        self._ensure_launched()
        wrapped = []
        for loader in dataloaders:
            if not isinstance(loader, DataLoader):
                raise TypeError(f"setup_dataloaders takes torch DataLoaders; got {type(loader).__name__}")
            shard = self._strategy.distributed_sampler_kwargs
            if use_distributed_sampler and shard is not None and shard["num_replicas"] > 1:
                loader = distributed_loader(loader, **shard, even_shards=even_shards, seed=global_seed())
            elif use_distributed_sampler:
                loader = resumable_loader(loader, seed=global_seed())
            seed_workers = worker_init_function(self.global_rank)
            if seed_workers is not None and loader.worker_init_fn is None:
                loader.worker_init_fn = seed_workers
            wrapped.append(FabricDataLoader(loader, self.device if move_to_device else None,
                                            self._strategy.process_dataloader(loader)))
        return wrapped[0] if len(wrapped) == 1 else tuple(wrapped)

    # -- the training step ----------------------------------------------------------------------------------------
    def backward(self, tensor: Tensor, *args: Any, model: FabricModule | None = None, **kwargs: Any) -> None:
        """Use instead of `loss.backward()`: the precision may scale the loss, the strategy may own backward.
        Inside an `OutOfMemoryAgreement` (`fabric_kit.out_of_memory`) the ranks first agree that none ran out of
        memory."""
        if self._oom_agreement is not None:
            self._oom_agreement.check()
        self._strategy.backward(tensor, None if model is None else _strategy_module(model), *args, **kwargs)

    def forward_backward(self, model: FabricModule, inputs: Any, target: Any, *,
                         loss_fn: Callable[[Any, Any], Tensor]) -> Tensor:
        """Use instead of `loss = loss_fn(model(inputs), target); fabric.backward(loss)`; returns the loss,
        detached. `inputs` is the model's one input, or a tuple of its positional inputs. A pipelined model
        (`ModelParallelStrategy(pipeline_parallel_size=...)`) cannot be called on its own: its strategy runs the
        schedule over the micro-batches, and the batch's mean loss is returned on every rank; under every other
        strategy this is the plain forward, loss and backward, so a script written with it runs unchanged."""
        args = inputs if isinstance(inputs, tuple) else (inputs,)
        strategy, module = self._strategy, _strategy_module(model)
        if isinstance(strategy, ForwardBackwardControl) and strategy.runs_forward_backward(module):
            return strategy.forward_backward(module, args, target, loss_fn)
        loss = loss_fn(model(*args), target)
        self.backward(loss, model=model)
        return loss.detach()

    def clip_gradients(self, module: Module, optimizer: Optimizer, clip_val: float | None = None,
                       max_norm: float | None = None, norm_type: float = 2.0,
                       error_if_nonfinite: bool = True) -> Tensor | None:
        """Clip by value (`clip_val`) or by total norm (`max_norm`, returns the norm before clipping)."""
        module, optimizer = _strategy_module(module), unwrap(optimizer)
        if max_norm is not None and clip_val is None:
            return self._strategy.clip_gradients_norm(module, optimizer, max_norm, norm_type, error_if_nonfinite)
        if clip_val is not None and max_norm is None:
            self._strategy.clip_gradients_value(module, optimizer, clip_val)
            return None
        raise ValueError(f"clip_gradients takes exactly one of clip_val / max_norm; got clip_val={clip_val}, "
                         f"max_norm={max_norm}")

    def autocast(self) -> AbstractContextManager[Any]:
        """The precision's compute context, for code outside the model's forward (e.g. the loss)."""
        return self._strategy.precision.forward_context()

    def no_backward_sync(self, module: Module, enabled: bool = True) -> AbstractContextManager[Any]:
        """Skip the gradient all-reduce inside this context (gradient accumulation); sync on the last micro-batch."""
        if not isinstance(module, FabricModule):
            raise TypeError(f"no_backward_sync needs the module returned by fabric.setup(); got "
                            f"{type(module).__name__}")
        if not isinstance(self._strategy, BackwardSyncControl):
            return nullcontext()  # one process: there is no all-reduce to skip
        return self._strategy.no_backward_sync(_strategy_module(module), enabled)

    def accumulate(self, model: Module, batches: Iterable[T], window: int, *,
                   num_items: Callable[[T], int | Tensor] | None = None, offset: int = 0) -> Accumulation[T]:
        """Accumulate gradients over windows of `window` micro-batches of `batches` (a loader): iterate it for
        `(micro, batch)`; run each micro-batch's forward and backward inside `with micro:` (no gradient all-reduce
        but on the window's last micro-batch), backpropagate `micro.scale(loss)` and step when `micro.is_last`.
        The last window ends with the loader, however short. `num_items(batch) -> int` weighs each micro-batch by
        its items over the window and the ranks (one all-reduce per window), so the gradient is that of the mean
        loss over the global batch; without it the loss is divided by `window`, as Lightning's
        `accumulate_grad_batches` does. `offset`: micro-batches of the first window already run (a resumed loop).
        See `fabric_kit.accumulation`."""
        if not isinstance(model, FabricModule):
            raise TypeError(f"fabric.accumulate needs the model returned by fabric.setup(); got "
                            f"{type(model).__name__}")
        return Accumulation(self, _strategy_module(model), batches, window, num_items, offset)

    def backward_inside_forward(self, module: Module) -> AbstractContextManager[Any]:
        """Wrap a model call inside which `fabric.backward` runs (manual optimization's `training_step`): under DDP
        each such backward syncs the gradients itself; DDP's own sync would fail or silently skip them."""
        return self._strategy.backward_inside_forward(_strategy_module(module))

    def to_device(self, obj: Any) -> Any:
        """Move a module, a tensor or any nested collection of tensors to this process's device."""
        if isinstance(obj, Module):
            self._strategy.module_to_device(_strategy_module(obj))
            return obj
        return self._strategy.batch_to_device(obj)

    def init_module(self, empty_init: bool | None = None) -> AbstractContextManager[Any]:
        """Create modules directly on the device and in the precision's dtype; `empty_init=True` skips weight
        initialisation (the weights will be loaded) — sharding strategies create them on the meta device."""
        return self._strategy.module_init_context(empty_init)

    def init_tensor(self) -> AbstractContextManager[Any]:
        return self._strategy.tensor_init_context()

    # -- collectives ----------------------------------------------------------------------------------------------
    def barrier(self, name: str | None = None) -> None:
        self._ensure_launched()
        self._strategy.barrier(name)

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        """Send any picklable object from process `src` to all."""
        self._ensure_launched()
        return self._strategy.broadcast(obj, src)

    def all_gather(self, data: Any, group: Any = None, sync_grads: bool = False) -> Any:
        """Stack each process's tensor (in any nested collection) along a new first dimension."""
        self._ensure_launched()
        data = _numbers_to_tensors(data, self.device)
        return apply_to_collection(data, Tensor, self._strategy.all_gather, group=group, sync_grads=sync_grads)

    def all_reduce(self, data: Any, group: Any = None, reduce_op: str | Any = "mean") -> Any:
        """Reduce tensors (in any nested collection) over processes: "mean", "sum", "max", "min", "product"."""
        self._ensure_launched()
        data = _numbers_to_tensors(data, self.device)
        return apply_to_collection(data, Tensor, self._strategy.all_reduce, group=group, reduce_op=reduce_op)

    @contextmanager
    def rank_zero_first(self, local: bool = False) -> Iterator[None]:
        """Rank 0 (of the job, or of each node with `local=True`) runs the block first, e.g. to download data."""
        rank = self.local_rank if local else self.global_rank
        if rank > 0:
            self.barrier()
        yield
        if rank == 0:
            self.barrier()

    # -- utilities ------------------------------------------------------------------------------------------------
    def profile(self, dirpath: str | Path, filename: str = "profile", **profiler_kwargs: Any) -> TorchProfile:
        """A torch.profiler context for a raw loop that writes this process's Chrome trace to `dirpath` as
        `<filename>-<global rank>.<time ns>.pt.trace.json` when it ends (or at the end of each active window of a
        `schedule`: call `.step()` on what it yields once per training step). It records the CPU, CUDA where
        available, and tensor memory; `profiler_kwargs` go to `torch.profiler.profile`
        (`fabric_kit.profiling.torch_profiler`). The loops Trainer's `profiler="pytorch"` writes the same trace."""
        return torch_profiler(dirpath, f"{filename}-{self.global_rank}", **profiler_kwargs)

    def print(self, *args: Any, **kwargs: Any) -> None:
        """`print` on global rank 0 only."""
        if self.is_global_zero:
            print(*args, **kwargs)

    @staticmethod
    def seed_everything(seed: int | None = None, workers: bool | None = None, verbose: bool = True) -> int:
        """`fabric_kit.seed_everything`, with `workers` on unless False, as Lightning's Fabric does."""
        return seed_everything(seed, workers is not False, verbose)

    def call(self, hook_name: str, *args: Any, **kwargs: Any) -> None:
        """Call `hook_name(*args, **kwargs)` on every callback defining it, with the keywords it takes."""
        call_hooks(self._callbacks, hook_name, args, kwargs)

    def log(self, name: str, value: Any, step: int | None = None) -> None:
        self.log_dict({name: value}, step=step)

    def log_dict(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Send scalar metrics to every logger (loggers write on rank 0 only)."""
        metrics = apply_to_collection(metrics, Tensor, lambda t: t.item())
        for logger in self._loggers:
            logger.log_metrics(metrics, step=step)

    # -- checkpoints ----------------------------------------------------------------------------------------------
    def save(self, path: str, state: dict[str, Any], filter: dict[str, Callable[[str, Any], bool]] | None = None
             ) -> None:
        """Save `state`: modules, optimizers and anything with `state_dict()` (a dataloader from
        `setup_dataloaders` too) are converted; others stored as is. Every rank's RNG states and the precision's
        state are added. The write is atomic and checksummed: a crash leaves the previous file or the new one."""
        self._ensure_launched()
        self._strategy.check_checkpoint_path(path, "save")
        self._strategy.save_checkpoint(path, state, filter)
        self._strategy.barrier()

    def load(self, path: str, state: dict[str, Any] | None = None, strict: bool = True, *,
             weights_only: bool | None = True) -> dict[str, Any]:
        """Restore the objects of `state` in place from `path`, with every rank's RNG states and the precision's
        state; return what the checkpoint held beyond `state` (everything, restoring nothing, when `state` is
        None; a `state` of another type is a TypeError). The file's checksum is verified first. Loading is safe by
        default (tensors and plain containers only; None is the same safe default, as in torch.load);
        `weights_only=False` unpickles arbitrary objects: only for checkpoints from a trusted source. Every
        strategy takes the same arguments."""
        self._ensure_launched()
        self._strategy.check_checkpoint_path(path, "load")
        remainder = self._strategy.load_checkpoint(path, state, strict, weights_only=weights_only is not False)
        self._strategy.barrier()
        return remainder

    def load_raw(self, path: str, obj: Module | Optimizer, strict: bool = True) -> None:
        """Load a plain state dict saved by `torch.save(model.state_dict(), path)` into a module or optimizer
        (plain, or as returned by `setup`); anything else is a TypeError."""
        self._ensure_launched()
        self._strategy.check_checkpoint_path(path, "load_raw")
        self._strategy.load_raw(path, obj, strict)


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _strategy_module(module: Module) -> Module:
    """What the strategy is handed for `module`: the module as the strategy set it up (DDP, the FSDP module,
    DeepSpeed's engine) behind fabric_kit's wrapper (and behind torch.compile's); a module that was not set up, as it
    is. Read from the instance dict: on `backward(loss, model=...)` every step, attribute access through
    `nn.Module.__getattr__` would cost Python calls."""
    if isinstance(module, FabricModule):
        return module.__dict__["_strategy_module"]  # type: ignore[no-any-return]  # set in FabricModule.__init__
    return module


def _check_unwrapped_optimizer(optimizer: Optimizer) -> None:
    if isinstance(optimizer, FabricOptimizer):
        raise ValueError(f"optimizer {type(optimizer.optimizer).__name__} was already set up; pass each optimizer "
                         "to `setup` once")


def _numbers_to_tensors(data: Any, device: torch.device) -> Any:
    """Python numbers anywhere in `data` become tensors, so a nested `{"loss": 0.5}` is reduced too (not returned
    unchanged); every tensor is moved to `device`, where the collective runs."""
    data = apply_to_collection(data, (int, float, bool), lambda number: torch.tensor(number, device=device))
    return move_to_device(data, device)


