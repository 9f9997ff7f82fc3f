"""The objects `Fabric.setup*` hands back. They behave like the user's own module, optimizer and dataloader, and
route the few calls that depend on the strategy or precision — forward, step, iteration — through them."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from types import MethodType
from typing import Any, Protocol, cast

import torch
from torch.nn import Module
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from fabric_kit.callbacks import call_hooks
from fabric_kit.collections import move_to_device
from fabric_kit.data import DistributedShardSampler
from fabric_kit.precision import Precision


def unwrap(obj: Any) -> Any:
    """The user's own object behind a fabric_kit wrapper (any other object as it is), e.g. so that checkpoints hold
    plain keys."""
    # Looked up on the type: an object answering every attribute (a Mock) is not a wrapper, and is returned.
    while isinstance(getattr(type(obj), "_fabric_kit_unwrapped", None), property):
        obj = obj._fabric_kit_unwrapped
    return obj


def split_compiled(module: Module) -> tuple[Module, Callable[[Module], Module] | None]:
    """The user's module inside a `torch.compile`d one, and the function compiling another module with the same
    settings: the compiled module's `dynamo_ctx`, which compiles any module it is called with (so the arguments
    need not be captured by patching `torch.compile`, and the import order does not matter). A module that is not
    compiled comes back as it is, with None."""
    inner, recompile = getattr(module, "_orig_mod", None), getattr(module, "dynamo_ctx", None)
    if isinstance(inner, Module) and callable(recompile):
        return inner, recompile
    return module, None


class OptimizerStepper(Protocol):
    """What the optimizer wrapper needs of the strategy (a `Strategy`; named by this protocol so that the wrappers,
    which checkpoint code unwraps, import no strategy)."""

    def optimizer_step(self, optimizer: Optimizer, **kwargs: Any) -> Any: ...


STEP_METHODS = ("training_step", "validation_step", "test_step", "predict_step")
"""The LightningModule methods that run the forward pass: called on the wrapper, they go through the strategy's
module as `forward` does (see `FabricModule.mark_forward_method`)."""


class FabricModule(Module):
    """Wraps the user's module (and the strategy's wrapper around it, e.g. DDP). `state_dict` and attributes come
    from the user's module, and attributes set on the wrapper are set on it, so checkpoints and user code see plain
    names. A call goes through `nn.Module.__call__` (hooks on the wrapper, global module hooks and `compile()` apply)
    to `forward`, which converts inputs and outputs for the precision around the strategy's module.

    `model.training_step(batch)` (and the other step methods, and any method marked with `mark_forward_method`)
    runs through the strategy's module too, as if it were `forward`: DDP then all-reduces its gradients, as
    Lightning does; FSDP2, which shards the user's module in place, gathers the parameters the method's submodule
    calls need. Any other method of the user's module that calls a submodule while the strategy wraps or shards it
    raises an error naming `mark_forward_method`, since it would silently bypass the wrapper."""

    _forward_module: Module  # the strategy's module (e.g. DDP), compiled when the user's was; typed for reads

    def __init__(self, forward_module: Module, precision: Precision, original_module: Module,
                 recompile: Callable[[Module], Module] | None = None, sharded_in_place: bool = False) -> None:
        """`recompile` (from `split_compiled`): compile the strategy's module as the user's was, outside DDP / FSDP,
        so the strategy wraps the plain module and checkpoints hold its plain keys. `sharded_in_place`: the
        strategy's module is the user's, sharded (FSDP2's `fully_shard`), so its methods need its forward too."""
        super().__init__()
        self._forward_module = forward_module if recompile is None else recompile(forward_module)
        # Whether methods of the user's module must run through the strategy's module (not so for one plain device).
        self.__dict__["_redirects"] = self._forward_module is not original_module or sharded_in_place
        self.__dict__["_strategy_module"] = forward_module  # not a submodule: reached through _forward_module
        self._original_module = original_module
        self._precision = precision
        self._forward_methods = set(STEP_METHODS)
        self._fabric_kit_initialized = True  # from here on attributes set on the wrapper go to the user's module

    @property
    def module(self) -> Module:
        return self._original_module

    @property
    def _fabric_kit_unwrapped(self) -> Module:
        return self._original_module

    @property
    def device(self) -> torch.device:
        """Where the module's parameters (else buffers) live; the CPU for a module with neither."""
        for tensor in (*self._original_module.parameters(), *self._original_module.buffers()):
            return tensor.device
        return torch.device("cpu")

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        precision = self._precision
        # Read from `_modules` directly: attribute access to a submodule costs two Python calls (`__getattr__`s).
        forward_module: Module = self._modules["_forward_module"]  # type: ignore[assignment]  # set in __init__
        if not precision.transforms_io:  # float32: nothing to convert, no context to enter
            return forward_module(*args, **kwargs)
        args, kwargs = precision.convert_input((args, kwargs))
        with precision.forward_context():
            output = forward_module(*args, **kwargs)
        return precision.convert_output(output)

    def mark_forward_method(self, method: str | Callable[..., Any]) -> None:
        """Make `model.<method>(...)` run through the strategy's module like `forward` (e.g. a `generate` or a
        second loss method under DDP). Accepts the method's name or the bound method."""
        if not isinstance(method, (str, MethodType)):
            raise TypeError(f"mark_forward_method takes a method or its name; got {type(method).__name__}")
        name = method if isinstance(method, str) else method.__name__
        if name == "forward":
            raise ValueError("mark_forward_method('forward'): forward already runs through the strategy's module")
        if not isinstance(getattr(self._original_module, name, None), MethodType):
            raise AttributeError(f"mark_forward_method({name!r}): {type(self._original_module).__name__}.{name} "
                                 "does not exist or is not a method")
        self._forward_methods.add(name)

    def _through_forward(self, name: str) -> Callable[..., Any]:
        """`original.<name>` called as the forward of the strategy's module: for one call `original.forward` is a
        function that puts the real forward back and runs the method; then the wrapper's forward is called."""
        original = self._original_module
        own_forward = original.__dict__.get("forward")  # an instance attribute the user set, if any

        def restore() -> None:
            if own_forward is None:
                original.__dict__.pop("forward", None)
            else:
                original.__dict__["forward"] = own_forward

        def redirected(*args: Any, **kwargs: Any) -> Any:
            restore()  # the method itself may call the real forward
            return getattr(original, name)(*args, **kwargs)

        def call(*args: Any, **kwargs: Any) -> Any:
            original.__dict__["forward"] = redirected
            try:
                return self.forward(*args, **kwargs)
            finally:
                restore()  # also when the strategy's module failed before calling it

        return call

    def _refuse_bypass(self, method: Callable[..., Any], name: str) -> Callable[..., Any]:
        """`method` of the user's module, raising when it calls a submodule: that call bypasses the strategy's
        module (no gradient sync, no unsharding)."""
        original = self._original_module

        def bypassed() -> RuntimeError:
            return RuntimeError(f"{type(original).__name__}.{name}() ran the model outside the strategy's module "
                                f"({type(self._forward_module).__name__}), so it bypassed it: call "
                                f"`model.mark_forward_method({name!r})` after `fabric.setup()`")

        def guarded(*args: Any, **kwargs: Any) -> Any:
            called = []
            handles = [m.register_forward_pre_hook(lambda *_: called.append(True)) for m in original.modules()]
            try:
                output = method(*args, **kwargs)
            except Exception as error:  # e.g. FSDP2's sharded parameters meeting plain tensors
                if called:
                    raise bypassed() from error
                raise
            finally:
                for handle in handles:
                    handle.remove()
            if called:
                raise bypassed()
            return output

        return guarded

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        return self._original_module.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        return self._original_module.load_state_dict(state_dict, strict=strict, assign=assign)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            pass
        original = self._original_module
        attribute = getattr(original, name)
        if not self.__dict__["_redirects"] or not isinstance(attribute, MethodType):
            return attribute
        if name in self.__dict__["_forward_methods"]:
            return self._through_forward(name)
        return self._refuse_bypass(attribute, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if not self.__dict__.get("_fabric_kit_initialized"):
            super().__setattr__(name, value)
            return
        original = self._original_module
        on_wrapper = name in dir(self)
        if hasattr(original, name) or not on_wrapper:
            setattr(original, name, value)
        if on_wrapper:
            super().__setattr__(name, value)


class FabricOptimizer:
    """Mixed into a subclass of the user's optimizer class (see `wrap_optimizer`), so `isinstance(opt, Adam)` and LR
    schedulers keep working, while `step` goes through the strategy."""

    _optimizer: Optimizer
    _strategy: OptimizerStepper
    _callbacks: list[Any]  # Fabric's callbacks, shared with it (a module set up later may join them)
    zero_grad: Callable[..., None]  # the optimizer's own bound method, set by `wrap_optimizer`

    @property
    def optimizer(self) -> Optimizer:
        return self._optimizer

    @property
    def _fabric_kit_unwrapped(self) -> Optimizer:
        return self._optimizer

    # `load_state_dict` replaces the optimizer's `param_groups` and `state` objects: read them through, so an LR
    # scheduler built on this wrapper still drives the real optimizer after a checkpoint is loaded.
    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self._optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self._optimizer.param_groups = value

    @property
    def state(self) -> Any:
        return self._optimizer.state

    @state.setter
    def state(self, value: Any) -> None:
        self._optimizer.state = value

    def step(self, closure: Any = None) -> Any:
        if closure is None:
            output = self._strategy.optimizer_step(self._optimizer)
        else:
            output = self._strategy.optimizer_step(self._optimizer, closure=closure)
        if self._callbacks:  # Fabric's callbacks: `on_after_optimizer_step(strategy, optimizer)`
            call_hooks(self._callbacks, "on_after_optimizer_step", (),
                       {"strategy": self._strategy, "optimizer": self._optimizer})
        return output

    def state_dict(self) -> dict[str, Any]:
        return self._optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._optimizer.load_state_dict(state_dict)


_OPTIMIZER_CLASSES: dict[type[Optimizer], type[FabricOptimizer]] = {}


def wrap_optimizer(optimizer: Optimizer, strategy: OptimizerStepper, callbacks: list[Any] | None = None
                   ) -> FabricOptimizer:
    """A view of `optimizer` whose `step` goes through `strategy`. It shares the optimizer's param groups and state;
    `zero_grad` is the optimizer's own bound method (no extra call on the hot path)."""
    cls = _OPTIMIZER_CLASSES.get(type(optimizer))
    if cls is None:
        subclass = type(f"Fabric{type(optimizer).__name__}", (FabricOptimizer, type(optimizer)), {})
        cls = cast(type[FabricOptimizer], subclass)  # both: a FabricOptimizer and the user's optimizer class
        _OPTIMIZER_CLASSES[type(optimizer)] = cls
    wrapped = cls.__new__(cls)
    shared = {k: v for k, v in optimizer.__dict__.items() if k not in ("step", "state_dict", "param_groups", "state")}
    wrapped.__dict__.update(shared)
    wrapped._optimizer = optimizer
    wrapped._strategy = strategy
    wrapped._callbacks = [] if callbacks is None else callbacks
    wrapped.zero_grad = optimizer.zero_grad
    return wrapped


class FabricDataLoader:
    """Iterates the (possibly re-sharded) loader, moves batches to the device and advances the sampler's epoch on
    every new pass, so shuffling differs per epoch without the user calling `set_epoch`. `batches` is what a pass
    iterates in the loader's place where the strategy acts around each batch (`Strategy.process_dataloader`).

    It is stateful: in the `state` given to `fabric.save`, its position is saved (epoch, indices of the epoch
    consumed over all ranks, shuffle seed); after `fabric.load` the next pass continues that epoch with its next
    batch, on any number of processes, later passes shuffle as in an uninterrupted run. The skip happens in the
    shard sampler `setup_dataloaders` installs, so no batch is fetched through workers only to be discarded.
    Creating a pass's iterator leaves the global torch RNG untouched (DataLoader draws its workers' base seed from
    it): a resumed run creates one where the original did not, and must still draw the same dropout masks.
    """

    def __init__(self, dataloader: DataLoader[Any], device: torch.device | None, batches: Iterable[Any] | None = None
                 ) -> None:
        self._dataloader = dataloader
        self._iterable = dataloader if batches is None else batches
        # Batches already live on the CPU: moving them there would only cost calls.
        self._device = device if device is not None and device.type != "cpu" else None
        self._epoch = 0  # the epoch of the running pass, or of the next one when `_fresh`
        self._start = 0  # indices of that epoch (over all ranks) consumed before the pass began, i.e. by a resume
        self._batches = 0  # batches this pass has yielded
        self._fresh = True  # the next pass begins at (_epoch, _start) instead of at the following epoch
        self._excluded: dict[int, list[tuple[int, int]]] = {}  # epoch -> positions [first, stop) left out

    @property
    def device(self) -> torch.device | None:
        return self._device

    @property
    def _fabric_kit_unwrapped(self) -> DataLoader[Any]:
        return self._dataloader

    def __len__(self) -> int:
        return len(self._dataloader)

    def __iter__(self) -> Iterator[Any]:
        if not self._fresh:  # a new pass after an unfinished one starts the next epoch
            self._epoch, self._start, self._batches = self._epoch + 1, 0, 0
        self._fresh = False
        shard_sampler = self._shard_sampler()
        for sampler in self._samplers():
            if sampler is shard_sampler and shard_sampler is not None:
                shard_sampler.set_epoch(self._epoch, start=self._start, exclude=self._excluded.get(self._epoch, ()))
            elif hasattr(sampler, "set_epoch"):
                sampler.set_epoch(self._epoch)
        with torch.random.fork_rng(devices=[]):
            iterator = iter(self._iterable)
        device = self._device
        for batch in iterator:
            self._batches += 1
            yield batch if device is None else move_to_device(batch, device)
        self._epoch, self._start, self._batches, self._fresh = self._epoch + 1, 0, 0, True

    def state_dict(self) -> dict[str, Any]:
        """The position of the next batch: `samples` counts the epoch's indices consumed over all ranks."""
        sampler = self._shard_sampler()
        state: dict[str, Any] = {"epoch": self._epoch, "samples": self._position(self._batches),
                 "batches": self._batches, "seed": sampler.seed if sampler is not None else None}
        if self._excluded:
            state["excluded"] = [[epoch, first, stop] for epoch, spans in sorted(self._excluded.items())
                                 for first, stop in spans]
        if _has_own_state(self._dataloader):  # e.g. torchdata's StatefulDataLoader: its workers' state too
            state["loader"] = self._dataloader.state_dict()  # type: ignore[attr-defined]  # checked just above
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Make the next pass continue at the saved position (with the saved shuffle seed). A loader with a state
        of its own is resumed through its `load_state_dict`: the pass then begins the epoch's order and the loader
        skips what it had yielded."""
        sampler = self._shard_sampler()
        resumes_itself = "loader" in state_dict and _has_own_state(self._dataloader)
        if resumes_itself:
            self._dataloader.load_state_dict(state_dict["loader"])  # type: ignore[attr-defined]  # checked above
        elif state_dict["samples"] and sampler is None:
            raise ValueError(
                f"cannot resume this dataloader in the middle of epoch {state_dict['epoch']}: its sampler "
                f"({type(self._dataloader.sampler).__name__}) cannot skip the {state_dict['samples']} consumed "
                "indices. Resumable loaders come from `setup_dataloaders(..., use_distributed_sampler=True)` over a "
                "map-style dataset without a custom batch_sampler; or leave the loader out of the state.")
        if sampler is not None and state_dict["seed"] is not None:
            sampler.seed = state_dict["seed"]
        start = 0 if resumes_itself else state_dict["samples"]
        self._epoch, self._start, self._batches, self._fresh = state_dict["epoch"], start, 0, True
        self._excluded = {}
        for epoch, first, stop in state_dict.get("excluded", ()):
            self.exclude(epoch, first, stop)

    def exclude(self, epoch: int, first: int, stop: int) -> None:
        """Leave the positions ``[first, stop)`` of epoch ``epoch``'s order over all ranks out of that epoch (the
        samples of a step that is skipped), from the next pass on; kept in `state_dict`. Positions are those
        `state_dict()["samples"]` counts; `last_batch` gives a batch's. Only the shard sampler `setup_dataloaders`
        installs can leave samples out (a loader resuming itself cannot): otherwise a ValueError."""
        if self._shard_sampler() is None or _has_own_state(self._dataloader):
            raise ValueError(f"cannot leave samples out of this dataloader ({type(self._dataloader).__name__} with "
                             f"sampler {type(self._dataloader.sampler).__name__}): only one set up by "
                             "`setup_dataloaders(..., use_distributed_sampler=True)` over a map-style dataset, "
                             "without a state of its own, can")
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0 or not 0 <= first <= stop:
            raise ValueError(f"exclude({epoch!r}, {first!r}, {stop!r}): expected an epoch >= 0 and positions "
                             "0 <= first <= stop")
        spans = self._excluded.setdefault(epoch, [])
        if (first, stop) not in spans:
            spans.append((first, stop))

    def last_batch(self) -> tuple[int, int, int]:
        """``(epoch, first, stop)``: the positions in the epoch's order over all ranks of the batch yielded last
        (by every rank together), for `exclude`; ``first == stop`` before the pass's first batch."""
        if not self._batches:
            return self._epoch, self._start, self._start
        return self._epoch, self._position(self._batches - 1, next_kept=True), self._position(self._batches)

    def indices(self, epoch: int, first: int, stop: int) -> list[int]:
        """The dataset indices at positions ``[first, stop)`` of epoch ``epoch``'s order over all ranks (e.g. of a
        `last_batch`), for a loader with the shard sampler `setup_dataloaders` installs (otherwise a ValueError)."""
        sampler = self._shard_sampler()
        if sampler is None:
            raise ValueError(f"this dataloader's sampler ({type(self._dataloader.sampler).__name__}) has no global "
                             "order to read positions from; use one set up by `setup_dataloaders`")
        indices: list[int] = sampler.global_order(epoch)[first:stop].tolist()
        return indices

    def _position(self, batches: int, next_kept: bool = False) -> int:
        """The epoch's position after this pass's first `batches` global batches of kept positions, stepping over
        the excluded spans on the way; `next_kept`: also over one that begins right there (where the next batch
        begins, rather than where the last one ended)."""
        sampler = self._shard_sampler()
        per_batch = (self._dataloader.batch_size or 1) * (sampler.num_replicas if sampler is not None else 1)
        position, left = self._start, batches * per_batch
        for first, stop in sorted(self._excluded.get(self._epoch, ())):
            if stop <= position:
                continue
            if position + left < first or (position + left == first and not next_kept):
                break
            left -= max(0, first - position)
            position = stop
        return position + left

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass epoch `epoch` from its first batch, shuffled as that epoch of an uninterrupted run.

        For a loop that decides its own epochs: it ends a pass it cut short (a batch limit), so the saved position
        is the next epoch's start rather than the middle of this one, or starts a loader created mid-run at the
        run's epoch. Call it between passes, not while iterating."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"set_epoch({epoch!r}): the epoch must be an int >= 0")
        self._epoch, self._start, self._batches, self._fresh = epoch, 0, 0, True

    def _samplers(self) -> list[Any]:
        loader = self._dataloader
        found = (getattr(loader, "sampler", None), getattr(loader.batch_sampler, "sampler", None))
        return [s for i, s in enumerate(found) if s is not None and s not in found[:i]]

    def _shard_sampler(self) -> DistributedShardSampler | None:
        return next((s for s in self._samplers() if isinstance(s, DistributedShardSampler)), None)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._dataloader, name)


def _has_own_state(dataloader: DataLoader[Any]) -> bool:
    """Whether the loader saves and restores its own position (`state_dict` / `load_state_dict`)."""
    return all(callable(getattr(type(dataloader), name, None)) for name in ("state_dict", "load_state_dict"))


def is_wrapped(obj: object) -> bool:
    """Whether `obj` was returned by `Fabric.setup*` (a module, optimizer or dataloader)."""
    return isinstance(obj, (FabricModule, FabricOptimizer, FabricDataLoader))


__all__ = ["FabricDataLoader", "FabricModule", "FabricOptimizer", "is_wrapped", "split_compiled"]
