"""Memory estimate before launch: what each rank of a training run will hold, worked out from a model built on the
meta device (shapes and dtypes only: nothing is allocated or computed, whatever the model's size).

Per rank: the parameters, gradients, float32 master weights and optimizer states, as the strategy lays them out over
the ranks (its `state_layout()`), in the dtypes the precision gives them; and, with a sample input, the activations
one forward keeps for backward (the bytes of every tensor saved for backward, counted by a saved-tensor hook on the
meta forward, each storage once, parameters left out), with activation checkpointing if asked for. From these, the
largest micro-batch that fits a given memory, assuming activations grow linearly with the batch.

    from fabric_kit.utilities import estimate_memory
    estimate = estimate_memory(lambda: GPT(config), strategy="fsdp", devices=8, precision="bf16-mixed",
                               sample_input=lambda: torch.randint(0, 50304, (4, 1024)), memory="80GiB")
    print(estimate.format())

What it leaves out: the memory the strategy's communication uses while it runs (DDP's gradient buckets, FSDP's and
ZeRO-3's gathered parameters of the module being computed, DeepSpeed's reduce buckets), the allocator's
fragmentation, and the CUDA context; state that an offload preset keeps in CPU memory is counted as on the device.
Under the `-mixed` precisions activations are counted in float32 (autocast does not act on meta tensors): an upper
bound.
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor
from torch.nn import Module

if TYPE_CHECKING:
    from fabric_kit.precision import Precision
    from fabric_kit.strategies.strategy import Strategy

Layout = Literal["replicated", "rows", "flat"]
"""How one kind of state is spread over the ranks: "replicated" (a full copy on every rank), "rows" (each tensor cut
along its first dimension as `torch.chunk` cuts it: FSDP2's DTensor shards), "flat" (each tensor flattened, padded to
a multiple of the world size and cut evenly: DeepSpeed ZeRO's partitions)."""
LAYOUTS = ("replicated", "rows", "flat")

OPTIMIZER_STATES: dict[str, tuple[int, bool]] = {
    "adamw": (2, True), "adam": (2, True), "sgd": (0, False), "sgd_momentum": (1, False), "adagrad": (1, True),
    "rmsprop": (1, True),
}
"""torch's optimizers by name: (state tensors shaped like each parameter, whether it also keeps a float32 `step`
tensor per parameter). `sgd` is SGD without momentum, `sgd_momentum` with."""

_STEP_BYTES = torch.float32.itemsize
"""torch's optimizers count steps in a float32 scalar tensor per parameter they update."""
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
          "tib": 2**40}


@dataclass(frozen=True)
class StateLayout:
    """How a strategy holds a model's training state on each rank, per kind of state (see `Layout`).

    `master_weights`: a float32 copy of the trainable parameters is kept beside them, laid out like the optimizer
    states, which are then float32 too (DeepSpeed). `parameter_dtype`: the dtype the strategy itself casts the
    parameters to (DeepSpeed's engine), or None where the precision plugin's `convert_module` decides.
    `shard_over_nodes` False: the shards are cut over one node's devices and repeated on every node (FSDP's
    HYBRID_SHARD)."""

    parameters: Layout = "replicated"
    gradients: Layout = "replicated"
    optimizer_states: Layout = "replicated"
    master_weights: bool = False
    parameter_dtype: torch.dtype | None = None
    shard_over_nodes: bool = True

    def __post_init__(self) -> None:
        for kind in ("parameters", "gradients", "optimizer_states"):
            if getattr(self, kind) not in LAYOUTS:
                raise ValueError(f"StateLayout({kind}={getattr(self, kind)!r}) is not supported; accepted: "
                                 f"{', '.join(LAYOUTS)}")


def local_numel(shape: torch.Size, layout: Layout, world_size: int, rank: int) -> int:
    """How many elements of a tensor of `shape` rank `rank` of `world_size` holds under `layout`."""
    numel = math.prod(shape)
    if layout == "replicated" or world_size == 1:
        return numel
    if layout == "flat":
        return math.ceil(numel / world_size)
    rows = shape[0] if shape else 1
    chunk = math.ceil(rows / world_size)
    return numel // max(rows, 1) * max(0, min(chunk, rows - rank * chunk))


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one rank holds (`rank` of `world_size`); buffers (e.g. batch norm's running statistics) are never
    sharded. `activations` is None without a sample input; then
    `max_batch_size` is None too, as it is without `memory`."""

    strategy: str
    world_size: int
    rank: int
    precision: str
    optimizer: str
    num_parameters: int
    num_trainable: int
    parameters: int
    buffers: int
    gradients: int
    master_weights: int
    optimizer_states: int
    activations: int | None = None
    batch_size: int | None = None
    activation_checkpointing: bool = False
    memory: int | None = None
    max_batch_size: int | None = None

    @property
    def states(self) -> int:
        """Parameters, buffers, gradients, master weights and optimizer states: what the rank holds whatever the
        batch."""
        return self.parameters + self.buffers + self.gradients + self.master_weights + self.optimizer_states

    @property
    def total(self) -> int:
        return self.states + (self.activations or 0)

    def format(self) -> str:
        """The table `fabric estimate` prints."""
        lines = [f"{self.num_parameters:,} parameters ({self.num_trainable:,} trainable); strategy {self.strategy} "
                 f"on {self.world_size} device(s), precision {self.precision}, optimizer {self.optimizer}",
                 f"per rank (rank {self.rank}):"]
        rows = [("parameters", self.parameters), ("buffers", self.buffers), ("gradients", self.gradients),
                ("master weights", self.master_weights), ("optimizer states", self.optimizer_states),
                ("states total", self.states)]
        if self.activations is not None:
            checkpointed = ", checkpointed" if self.activation_checkpointing else ""
            rows += [(f"activations (batch {self.batch_size}{checkpointed})", self.activations),
                     ("total", self.total)]
        width = max(len(name) for name, _ in rows)
        lines += [f"  {name:<{width}}  {format_bytes(value):>10}" for name, value in rows]
        if self.memory is not None:
            if self.max_batch_size is None:
                lines.append(f"fits in {format_bytes(self.memory)}: {'yes' if self.states <= self.memory else 'no'}"
                             " (states only; pass a sample input for the largest micro-batch)")
            else:
                lines.append(f"largest micro-batch in {format_bytes(self.memory)}: {self.max_batch_size}")
        return "\n".join(lines)


def format_bytes(count: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{count / size:.2f} {unit}"
    return f"{count} B"


def parse_memory(value: int | str) -> int:
    """A byte count from an int or a string like "80GB" (10**9), "80GiB" (2**30), "512MiB", "1024"."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?\s*", str(value).lower())
    if isinstance(value, str) and match and float(match.group(1)) > 0:
        return int(float(match.group(1)) * _UNITS[match.group(2) or "b"])
    raise ValueError(f"memory={value!r} is not a memory size; accepted: a positive byte count, or a number with "
                     "a unit, e.g. 80GB, 80GiB, 512MiB")


def estimate_memory(model: Module | Callable[[], Module], strategy: str | Strategy = "ddp", devices: int = 1,
                    num_nodes: int = 1, precision: str | int = "32-true", optimizer: str = "adamw",
                    activation_checkpointing: bool | Iterable[type[Module]] | Callable[[Module], bool] = False,
                    sample_input: Any = None, memory: int | str | None = None, rank: int = 0) -> MemoryEstimate:
    """Estimate the memory rank `rank` of `devices * num_nodes` processes holds when training `model`.

    Args:
        model: a factory returning the model (called on the meta device, so nothing is allocated), or a model
            already on the meta device.
        strategy: a registered name (`ddp`, `fsdp`, `deepspeed_stage_3`, ...) or a Strategy instance (whose
            precision then stands; `precision` applies to a name only).
        precision: a precision name, as `Fabric(precision=...)` takes it.
        optimizer: one of `OPTIMIZER_STATES`.
        activation_checkpointing: True (the modules held in an `nn.ModuleList`, the usual transformer blocks), a set
            of module classes or a function `module -> bool`, as FSDP's `activation_checkpointing_policy`.
        sample_input: one micro-batch for the model (a tensor, a tuple of positional arguments or a dict of keyword
            arguments), or a function returning one, called on the meta device; its first tensor's leading dimension
            is the batch size.
        memory: the memory of one device, for the largest micro-batch that fits: bytes, or e.g. "80GB", "80GiB".
    """
    from fabric_kit.precision import create_precision, normalize_precision
    from fabric_kit.strategies.registry import strategy_class

    if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in (devices, num_nodes)):
        raise ValueError(f"devices={devices!r}, num_nodes={num_nodes!r}: pass positive process counts")
    world_size = devices * num_nodes
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank!r} is not a rank of {world_size} processes; accepted: 0..{world_size - 1}")
    if optimizer not in OPTIMIZER_STATES:
        raise ValueError(f"optimizer={optimizer!r} is not supported; accepted: {', '.join(OPTIMIZER_STATES)}")
    budget = None if memory is None else parse_memory(memory)
    if isinstance(strategy, str):
        name = ("ddp" if world_size > 1 else "single_device") if strategy == "auto" else strategy
        cls, kwargs = strategy_class(name)
        strategy = cls(**kwargs)
        # The device type only picks autocast's device, which changes no dtype and so no byte count.
        strategy.precision = create_precision(normalize_precision(precision), "cpu")
    else:
        name = type(strategy).__name__
    layout = strategy.state_layout()
    shards = world_size if layout.shard_over_nodes else devices
    module = _on_meta(model, strategy.precision, layout)
    moments, step_tensors = OPTIMIZER_STATES[optimizer]

    def held(kind: Layout, parameters: list[Tensor], dtype: torch.dtype | None = None) -> int:
        return sum(local_numel(p.shape, kind, shards, rank % shards) * (dtype or p.dtype).itemsize
                   for p in parameters)

    parameters: list[Tensor] = list(module.parameters())
    trainable = [p for p in parameters if p.requires_grad]
    master = layout.master_weights and bool(trainable)
    state_dtype = torch.float32 if master else None
    steps = (1 if layout.optimizer_states == "flat" else len(trainable)) if step_tensors and trainable else 0
    activations = batch_size = None
    if sample_input is not None:
        checkpointed = _checkpoint_policy(activation_checkpointing, module)
        activations, batch_size = activation_memory(module, sample_input, strategy.precision, checkpointed)
    estimate = MemoryEstimate(
        strategy=name, world_size=world_size, rank=rank, precision=strategy.precision.precision, optimizer=optimizer,
        num_parameters=sum(p.numel() for p in parameters), num_trainable=sum(p.numel() for p in trainable),
        parameters=held(layout.parameters, parameters), buffers=sum(b.nbytes for b in module.buffers()),
        gradients=held(layout.gradients, trainable),
        master_weights=held(layout.optimizer_states, trainable, torch.float32) if master else 0,
        optimizer_states=moments * held(layout.optimizer_states, trainable, state_dtype) + _STEP_BYTES * steps,
        activations=activations, batch_size=batch_size, activation_checkpointing=bool(activation_checkpointing),
        memory=budget)
    if budget is None or activations is None or batch_size is None:
        return estimate
    per_sample = max(activations / batch_size, 1.0)
    fits = max(0, math.floor((budget - estimate.states) / per_sample))
    return dataclasses.replace(estimate, max_batch_size=fits)


def activation_memory(model: Module, sample_input: Any, precision: Precision,
                      checkpointed: Callable[[Module], bool] | None = None) -> tuple[int, int]:
    """(bytes of the activations one forward of `model` on `sample_input` keeps for backward, the batch size),
    counted on the meta device: every tensor saved for backward, each storage once, parameters left out, plus the
    output. With `checkpointed`, the topmost selected modules keep only their inputs, and backward recomputes one of
    them at a time: their inputs and the largest one's saved tensors count instead of all theirs."""
    from fabric_kit.collections import apply_to_collection, move_to_device

    with torch.device("meta"):
        batch = sample_input() if callable(sample_input) else sample_input
    batch = precision.convert_input(move_to_device(batch, torch.device("meta")))
    sizes: list[int] = []
    apply_to_collection(batch, Tensor, lambda tensor: sizes.append(tensor.shape[0] if tensor.dim() else 1))
    if not sizes:
        raise ValueError(f"the sample input holds no tensor (got {type(batch).__name__}); pass a tensor, a tuple of "
                         "positional arguments or a dict of keyword arguments, or a function returning one")
    saved = _SavedTensors(model, checkpointed or (lambda module: False))
    with saved.counting(), torch.enable_grad(), precision.forward_context():
        if isinstance(batch, dict):
            output = model(**batch)
        else:
            output = model(*batch) if isinstance(batch, tuple) else model(batch)
    apply_to_collection(output, Tensor, saved.keep)
    return saved.total(), sizes[0]


class _SavedTensors:
    """Counts what a forward saves for backward, by storage: a tensor's views (a weight's transpose, an input's
    reshape) share its storage and count once. Meta tensors have no addresses, so a storage is known by the tensor
    that owns it (`_base` of a view: the tensor whose storage it shares)."""

    def __init__(self, model: Module, checkpointed: Callable[[Module], bool]) -> None:
        self.parameters = {id(p) for p in model.parameters()}
        self.owners: dict[int, Tensor] = {}  # by id; holding the tensors keeps their ids from being reused
        self.outside: set[int] = set()
        self.blocks: list[set[int]] = []  # per checkpointed module's forward, what it saved
        self._block: set[int] | None = None
        self._hooks = [hook for module in _topmost(model, checkpointed) for hook in (
            module.register_forward_pre_hook(self._enter, with_kwargs=True), module.register_forward_hook(self._exit))]

    def _key(self, tensor: Tensor) -> int | None:
        # torch offers no public identity for a meta tensor's storage (its data_ptr is 0 for all); `_base` is the
        # tensor a view was made from, as autograd tracks it.
        owner = tensor._base if tensor._base is not None else tensor
        if id(owner) in self.parameters:
            return None
        self.owners.setdefault(id(owner), owner)
        return id(owner)

    def keep(self, tensor: Tensor) -> Tensor:
        key = self._key(tensor)
        if key is not None:
            (self.outside if self._block is None else self._block).add(key)
        return tensor

    def _enter(self, module: Module, args: Any, kwargs: Any) -> None:
        from fabric_kit.collections import apply_to_collection

        apply_to_collection((args, kwargs), Tensor, self.keep)  # what a checkpointed module keeps: its inputs
        self._block = set()
        self.blocks.append(self._block)

    def _exit(self, module: Module, args: Any, output: Any) -> None:
        self._block = None

    @contextmanager
    def counting(self) -> Iterator[None]:
        try:
            with torch.autograd.graph.saved_tensors_hooks(self.keep, lambda tensor: tensor):
                yield
        finally:
            for hook in self._hooks:
                hook.remove()

    def total(self) -> int:
        def size(keys: Iterable[int]) -> int:
            return sum(self.owners[key].untyped_storage().nbytes() for key in keys)

        recomputed = max((size(block - self.outside) for block in self.blocks), default=0)
        return size(self.outside) + recomputed


def _topmost(model: Module, selects: Callable[[Module], bool]) -> list[Module]:
    """The selected submodules that no selected module contains (checkpointing the outer one covers the inner)."""
    found: list[Module] = []
    covered: set[int] = set()
    for module in model.modules():
        if id(module) in covered:
            continue
        if selects(module):
            found.append(module)
            covered.update(id(inner) for inner in module.modules())
    return found


def _checkpoint_policy(policy: bool | Iterable[type[Module]] | Callable[[Module], bool],
                       model: Module) -> Callable[[Module], bool] | None:
    """`activation_checkpointing` as `module -> bool`: True selects the modules held in an `nn.ModuleList`."""
    if policy is False:
        return None
    if policy is True:
        blocks = {id(child) for module in model.modules() if isinstance(module, torch.nn.ModuleList)
                  for child in module}
        return lambda module: id(module) in blocks
    from fabric_kit.strategies.fsdp.sharding import as_predicate

    return as_predicate(policy, "activation_checkpointing")


def _on_meta(model: Module | Callable[[], Module], precision: Precision, layout: StateLayout) -> Module:
    """The model on the meta device, its parameters in the dtype training gives them."""
    if not isinstance(model, Module):
        if not callable(model):
            raise TypeError(f"model={model!r}: pass an nn.Module on the meta device or a function returning one")
        with torch.device("meta"):
            model = model()
        if not isinstance(model, Module):
            raise TypeError(f"the model factory returned a {type(model).__name__}, not an nn.Module")
    elif any(not tensor.is_meta for tensor in (*model.parameters(), *model.buffers())):
        raise ValueError("the model holds tensors that are not on the meta device; pass a factory (called on the "
                         "meta device) or a model created under `torch.device('meta')`")
    with torch.device("meta"):
        model = precision.convert_module(model)
    if layout.parameter_dtype is not None:
        model = model.to(layout.parameter_dtype)
    return model


__all__ = ["LAYOUTS", "OPTIMIZER_STATES", "Layout", "MemoryEstimate", "StateLayout", "activation_memory",
           "estimate_memory", "format_bytes", "local_numel", "parse_memory"]
