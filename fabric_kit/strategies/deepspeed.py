"""DeepSpeed ZeRO: the engine from `deepspeed.initialize` owns the model, the optimizer step, gradient clipping and
accumulation, the fp16/bf16 master weights and the checkpoint files; this strategy routes Fabric's calls to it.

DeepSpeed is an optional extra and is imported only when a model is set up, so importing fabric_kit (or listing the
strategy names) never imports it.

Configuration. `config` is a DeepSpeed config (a dict or the path of a JSON file); the arguments `stage`,
`offload_optimizer`, `offload_parameters`, `gradient_clipping`, `gradient_accumulation_steps` and
`micro_batch_size` fill it in and must agree with what it already says. Defaults added when the config is silent:
ZeRO stage 2 (only when no config is given at all), `train_micro_batch_size_per_gpu: 1` (DeepSpeed insists on a
batch size but uses it only for its own dataloader and throughput logging; unless `train_batch_size` is set), and
`zero_allow_untested_optimizer: true` (the optimizer is the user's torch optimizer). Fabric's precision becomes the
config's `fp16` / `bf16` section; with precision 32 the config's own sections stand.

Loop differences from DDP:
- gradient clipping happens inside the engine's step: `fabric.clip_gradients(model, optimizer, max_norm=...)` sets
  it for the next step and returns the norm (an error if the config's `gradient_clipping` says otherwise); or set
  `gradient_clipping` once. DeepSpeed clips by norm only: `clip_val` raises.
- gradient accumulation: with `gradient_accumulation_steps=N` call `fabric.backward(loss)` and `optimizer.step()`
  on every micro-batch; the engine divides the loss by N and steps once every N calls. `fabric.no_backward_sync`
  works for stages 0 and 1 (the engine's `no_sync`); stages 2 and 3 reduce gradients inside every backward, so it
  raises there.
- the learning-rate scheduler stays the user's to step; the engine does not step it.
- with several models set up, pass `fabric.backward(loss, model=model)`.
- checkpoints are directories written by every rank through the engine (swapped in atomically); the state's other
  entries travel as the engine's client state. `fabric.load` reads them with the safe loader, as under every
  other strategy (`deepspeed_checkpoint_engine.py`); `weights_only=False` hands reading back to DeepSpeed's full
  unpickler (trusted checkpoints only).
- ZeRO offload (`deepspeed_stage_2_offload`, `deepspeed_stage_3_offload`) wants DeepSpeed's own CPU optimizer,
  `deepspeed.ops.adam.DeepSpeedCPUAdam` (a C++ op built on first use); DeepSpeed refuses torch optimizers there
  unless the config sets `zero_force_ds_cpu_optimizer: false`.
"""
from __future__ import annotations

import atexit
import copy
import gc
import importlib.util
import json
import os
import weakref
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.nn import Module
from torch.optim import Optimizer

from fabric_kit.accelerators import Accelerator
from fabric_kit.checkpoint.state import RESERVED_KEY, Filter
from fabric_kit.environments import ClusterEnvironment
from fabric_kit.memory_estimate import StateLayout
from fabric_kit.precision import Precision, TruePrecision
from fabric_kit.strategies.deepspeed_checkpoint_engine import safe_loading
from fabric_kit.strategies.parallel import ParallelStrategy, StartMethod
from fabric_kit.strategies.strategy import BackwardSyncControl
from fabric_kit.wrappers import unwrap

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

INSTALL_HINT = ("pip install 'fabric_kit[deepspeed]' --no-build-isolation (DeepSpeed builds against the installed "
                "torch, so torch must be installed first and the build must see it)")
_NEEDS_DEEPSPEED = ("DeepSpeedStrategy (strategy='deepspeed', 'deepspeed_stage_1', ..., 'deepspeed_stage_3_offload') "
                    "needs the DeepSpeed package")
TAG = "checkpoint"
"""The engine's tag: the subdirectory of a checkpoint directory holding DeepSpeed's files."""
CLIENT_KEY = "fabric_kit"
"""The client-state entry holding the state's other entries, apart from DeepSpeed's own keys."""
_HALF = {"16-mixed": ("fp16", torch.float16), "16-true": ("fp16", torch.float16),
         "bf16-mixed": ("bf16", torch.bfloat16), "bf16-true": ("bf16", torch.bfloat16)}


class DeepSpeedPrecision(TruePrecision):
    """Lightning's `DeepSpeedPrecision(precision)`: `"32-true"`, or fp16/bf16 (`"16-mixed"`, `"16-true"`,
    `"bf16-mixed"`, `"bf16-true"`, each the config's `fp16` / `bf16` section). The engine casts the model and keeps
    fp32 master weights (and the fp16 loss scale), so Fabric only converts inputs to the model's dtype and outputs
    back to float32."""

    def __init__(self, precision: str) -> None:
        if precision != "32-true" and precision not in _HALF:
            raise ValueError(f"DeepSpeedPrecision(precision={precision!r}) is not supported; accepted: 32-true, "
                             f"{', '.join(_HALF)}")
        super().__init__(_HALF[precision][1] if precision in _HALF else torch.float32, precision)
        self.transforms_io = precision != "32-true"

    def convert_module(self, module: Module) -> Module:
        return module  # the engine casts it after building the fp32 master copy


class DeepSpeedStrategy(ParallelStrategy, BackwardSyncControl):
    """One process per device, launched as for DDP; the engine from `deepspeed.initialize` wraps the model."""

    owns_optimizer = True

    def __init__(self, accelerator: Accelerator | None = None, parallel_devices: list[torch.device] | None = None,
                 cluster_environment: ClusterEnvironment | None = None, precision: Precision | None = None,
                 process_group_backend: str | None = None, timeout: timedelta | None = None,
                 start_method: StartMethod = "popen", config: dict[str, Any] | str | os.PathLike[str] | None = None,
                 stage: int | None = None, offload_optimizer: bool = False, offload_parameters: bool = False,
                 gradient_clipping: float | None = None, gradient_accumulation_steps: int | None = None,
                 micro_batch_size: int | None = None, collective_timeout: float | timedelta | None = None) -> None:
        if importlib.util.find_spec("deepspeed") is None:
            raise ImportError(f"{_NEEDS_DEEPSPEED}, which is not installed: {INSTALL_HINT}")
        super().__init__(accelerator, parallel_devices, cluster_environment, precision, process_group_backend,
                         timeout, start_method, collective_timeout=collective_timeout)
        self.config = _build_config(_read_config(config), stage, offload_optimizer, offload_parameters,
                                    gradient_clipping, gradient_accumulation_steps, micro_batch_size)
        # Every engine this strategy built, and whether it was given an optimizer (can train).
        self._engines: weakref.WeakKeyDictionary[DeepSpeedEngine, bool] = weakref.WeakKeyDictionary()
        # Engines whose next step clips by what `clip_gradients` asked (then back to the config's value).
        self._clipping_once: weakref.WeakSet[DeepSpeedEngine] = weakref.WeakSet()
        # Engines running a micro-batch of `fabric.accumulate`, whose loss arrives already normalized.
        self._accumulating: weakref.WeakSet[DeepSpeedEngine] = weakref.WeakSet()
        self._release_at_exit = False

    def __getstate__(self) -> dict[str, Any]:
        # Spawned ranks get a pickled copy before any engine exists; a weak mapping cannot be pickled.
        return {**self.__dict__, "_engines": None, "_clipping_once": None, "_accumulating": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _engines=weakref.WeakKeyDictionary(), _clipping_once=weakref.WeakSet(),
                             _accumulating=weakref.WeakSet())

    @property
    def zero_stage(self) -> int:
        return int(self.config.get("zero_optimization", {}).get("stage", 0))

    @property
    def shards_parameters(self) -> bool:  # type: ignore[override]  # a class attribute on Strategy
        return self.zero_stage == 3

    @property
    def precision(self) -> Precision:
        return self._precision

    @precision.setter
    def precision(self, precision: Precision) -> None:
        self._precision = _as_deepspeed(precision)

    def state_layout(self) -> StateLayout:
        """ZeRO's partitions of each flattened tensor: optimizer states from stage 1, gradients from stage 2,
        parameters at stage 3. The engine casts the parameters to the precision's dtype and keeps float32 master
        weights, on which the optimizer states are float32 too: below float32 always, and from stage 1 also of
        float32 parameters (ZeRO's optimizer clones its partition, as it compares the partition's device with
        the name of its own and never finds them equal)."""
        stage, dtype = self.zero_stage, _as_deepspeed(self.precision).dtype
        return StateLayout(parameters="flat" if stage >= 3 else "replicated",
                           gradients="flat" if stage >= 2 else "replicated",
                           optimizer_states="flat" if stage >= 1 else "replicated",
                           master_weights=stage >= 1 or dtype != torch.float32, parameter_dtype=dtype)

    def setup_environment(self) -> None:
        """Fix the precision (now final) into the config, and tell DeepSpeed what it would otherwise guess: the
        device type (it would pick CUDA whenever present) and the local rank (it reads LOCAL_RANK)."""
        self.precision = _apply_precision(self.config, self.precision)
        os.environ.setdefault("DS_ACCELERATOR", self.root_device.type)
        os.environ["LOCAL_RANK"] = str(self.local_rank)
        super().setup_environment()

    # -- modules and optimizers ---------------------------------------------------------------------------------
    def setup_module_and_optimizers(self, module: Module, optimizers: list[Optimizer],
                                    scheduler: Any = None) -> tuple[Module, list[Optimizer], Any]:
        if len(optimizers) > 1:
            raise ValueError(f"DeepSpeed drives one optimizer per model; got {len(optimizers)} optimizers "
                             f"({', '.join(type(o).__name__ for o in optimizers)})")
        engine = self._initialize(module, optimizers[0] if optimizers else None)
        return engine, [engine.optimizer] if optimizers else [], scheduler

    def setup_module(self, module: Module) -> Module:
        """A model without optimizer (inference): the engine still shards it under stage 3."""
        engine: Module = self._initialize(module, None)
        return engine

    def setup_optimizer(self, optimizer: Optimizer) -> Optimizer:
        raise RuntimeError("DeepSpeed builds its engine from the model and its optimizer together: use "
                           "`model, optimizer = fabric.setup(model, optimizer)` instead of setup_module / "
                           "setup_optimizers")

    def _initialize(self, module: Module, optimizer: Optimizer | None) -> DeepSpeedEngine:
        deepspeed = _import_deepspeed()
        config = copy.deepcopy(self.config)
        if optimizer is None and self.zero_stage < 3:
            # Without optimizer stages 1 and 2 have nothing to shard (DeepSpeed refuses them); 3 shards parameters.
            config.pop("zero_optimization", None)
        engine, *_ = deepspeed.initialize(model=module, optimizer=optimizer, config=config, dist_init_required=False)
        if not self._release_at_exit:  # registered after the process group's own exit hook, so it runs first
            atexit.register(_release_engines, self._engines)
            self._release_at_exit = True
        self._engines[engine] = optimizer is not None
        return engine

    # -- the training step --------------------------------------------------------------------------------------
    def backward(self, tensor: Tensor, module: Module | None, *args: Any, **kwargs: Any) -> None:
        engine = self._engine_for(module)
        if engine in self._accumulating:  # `micro.scale` normalized the loss: not divided again by the config's steps
            kwargs.setdefault("scale_wrt_gas", False)
        engine.backward(tensor, *args, **kwargs)

    def optimizer_step(self, optimizer: Optimizer, **kwargs: Any) -> Any:
        """The engine's step: clipping, the fp16 loss scale, accumulation boundaries and zeroing the gradients."""
        closure = kwargs.pop("closure", None)
        if kwargs:
            raise TypeError(f"under DeepSpeed optimizer.step() takes only `closure`; got {sorted(kwargs)}")
        if closure is not None:
            closure()
        engine = next((e for e in self._engines if e.optimizer is optimizer), None)
        if engine is None:
            raise RuntimeError(f"optimizer {type(optimizer).__name__} belongs to no DeepSpeed engine of this "
                               "strategy; step the optimizer returned by `fabric.setup(model, optimizer)`")
        output = engine.step()
        if engine in self._clipping_once:  # clip_gradients asked for this step only, as torch's clipping acts
            _set_clipping(engine, self.config.get("gradient_clipping") or 0.0)
            self._clipping_once.discard(engine)
        return output

    def clip_gradients_norm(self, module: Module, optimizer: Optimizer, max_norm: float, norm_type: float = 2.0,
                            error_if_nonfinite: bool = True) -> Tensor:
        """Clip through the engine: its next `optimizer.step()` clips to `max_norm` (DeepSpeed's
        `gradient_clipping`, set for that step only), and the total 2-norm of the gradients over all ranks is
        returned now, as `torch.nn.utils.clip_grad_norm_` returns it. A config that sets gradient_clipping to
        another value is an error: the engine clips by it at every step anyway."""
        configured = self.config.get("gradient_clipping") or 0.0
        if configured and configured != max_norm:
            raise ValueError(f"fabric.clip_gradients(max_norm={max_norm}) contradicts the DeepSpeed config's "
                             f"gradient_clipping={configured}, by which the engine clips every step: set it in one "
                             "place")
        if norm_type != 2.0:
            raise ValueError(f"fabric.clip_gradients(norm_type={norm_type}) is not supported under DeepSpeed, which "
                             "clips by the total 2-norm only; accepted: norm_type=2.0")
        engine = self._engine_for(module)
        norm = _gradient_norm(engine)
        if error_if_nonfinite and not torch.isfinite(norm):
            raise RuntimeError(f"the total norm of the gradients is {norm.item()}, so they cannot be clipped; pass "
                               "error_if_nonfinite=False to clip anyway (DeepSpeed then skips a step that overflowed "
                               "under fp16)")
        _set_clipping(engine, max_norm)
        self._clipping_once.add(engine)
        return norm

    def clip_gradients_value(self, module: Module, optimizer: Optimizer, clip_val: float) -> None:
        raise RuntimeError(f"fabric.clip_gradients(clip_val={clip_val}) is not supported under DeepSpeed, which "
                           "clips only by total norm inside optimizer.step(): call fabric.clip_gradients(model, "
                           "optimizer, max_norm=...), or set DeepSpeedStrategy(gradient_clipping=MAX_NORM)")

    def out_of_memory_checks(self, check: Callable[[], None]) -> AbstractContextManager[Any]:
        """Stages 0 to 2 run no collective in forward and prepare nothing for the backward, so an attempt that
        failed leaves nothing to discard. Stage 3 gathers each submodule's parameters inside the forward, by
        hooks whose per-step state DeepSpeed offers no call to drop when a forward stops midway: refused."""
        if self.zero_stage == 3:
            raise RuntimeError("out-of-memory errors cannot be agreed on under DeepSpeed ZeRO stage 3 "
                               "(find_executable_batch_size, BatchSizeFinder, on_oom='reduce'): its forward gathers "
                               "parameters submodule by submodule, and a forward that stopped midway on one rank "
                               "cannot be dropped; accepted: ZeRO stages 0 to 2, or strategy='fsdp'")
        return nullcontext()

    def no_backward_sync(self, module: Module, enabled: bool) -> AbstractContextManager[Any]:
        if not enabled:
            return nullcontext()
        engine = self._engine_for(module)
        if engine.zero_optimization_partition_gradients():
            raise RuntimeError(
                f"no_backward_sync is not supported under DeepSpeed ZeRO stage {engine.zero_optimization_stage()}: "
                "stages 2 and 3 reduce and partition gradients inside every backward. Let DeepSpeed accumulate: "
                "DeepSpeedStrategy(gradient_accumulation_steps=N) (or the config's key), then call "
                "fabric.backward(loss) and optimizer.step() on every micro-batch; the engine steps once every N")
        no_sync: AbstractContextManager[Any] = engine.no_sync()
        return no_sync

    @contextmanager
    def accumulation_context(self, module: Module, sync: bool) -> Iterator[None]:
        """DeepSpeed's own accumulation: the micro-batch's `sync` is the engine's accumulation boundary (stages 0
        and 1 all-reduce only there, and the engine's step steps only there; stages 2 and 3 reduce-scatter inside
        every backward, as their partitioning needs), and its backward takes the loss as `micro.scale` made it.
        Once used, `fabric.accumulate` owns the boundary: the config's gradient_accumulation_steps stays unused."""
        engine = self._engine_for(module)
        engine.set_gradient_accumulation_boundary(sync)
        self._accumulating.add(engine)
        try:
            yield
        finally:
            self._accumulating.discard(engine)

    def _engine_for(self, module: Module | None) -> DeepSpeedEngine:
        """The engine behind `module` (as returned by `fabric.setup`), or, when no module is named, the only one
        set up with an optimizer."""
        if module is not None:
            if module not in self._engines:
                raise TypeError(f"model {type(module).__name__} was not set up by this DeepSpeed strategy; "
                                "pass the model returned by `fabric.setup`")
            return module
        engines = [engine for engine, trains in self._engines.items() if trains]
        if len(engines) != 1:
            raise RuntimeError(f"{len(engines)} models are set up with optimizers under DeepSpeed: name the one this "
                               "loss belongs to, `fabric.backward(loss, model=model)`" if engines else
                               "no model is set up with an optimizer under DeepSpeed: call "
                               "`fabric.setup(model, optimizer)` first")
        return engines[0]

    # -- the module's full state dict ---------------------------------------------------------------------------
    def get_module_state_dict(self, module: Module) -> dict[str, Any]:
        """The full state dict with the user's keys, on every rank; under stage 3 the parameters are gathered from
        every rank's partition (copies: the partitions are released again). The values are the module's, in the
        precision's dtype (ZeRO's fp32 master copies live in its optimizer)."""
        engine = self._engine_of(module)
        if self.zero_stage < 3:
            return super().get_module_state_dict(engine.module)
        with _import_deepspeed().zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None):
            return {key: value.detach().clone() for key, value in engine.module.state_dict().items()}

    def load_module_state_dict(self, module: Module, state_dict: dict[str, Any], strict: bool = True) -> None:
        """Every rank passes the full state dict (under stage 3 rank 0's values are partitioned again, as the
        engine loads a checkpoint's module); the optimizer's fp32 master copies are refreshed from the loaded
        weights, so its next step starts from them instead of putting the old weights back."""
        engine = self._engine_of(module)
        engine.load_module_state_dict({"module": state_dict}, strict=strict, fetch_z3_params=self.zero_stage == 3)
        refresh = getattr(engine.optimizer, "refresh_fp32_params", None)
        if callable(refresh):
            refresh()

    def _engine_of(self, module: Module) -> DeepSpeedEngine:
        engine = self._engine_holding(module)
        if engine is None:
            raise TypeError(f"model {type(unwrap(module)).__name__} was not set up by this DeepSpeed strategy; pass "
                            "the model returned by `fabric.setup`")
        return engine

    def _engine_holding(self, obj: Any) -> DeepSpeedEngine | None:
        """The engine this strategy built whose model `obj` is (what `fabric.setup` returned, the engine, or the
        user's module inside it), or None."""
        target = unwrap(obj)
        return next((e for e in self._engines if target is e or target is e.module), None)

    # -- checkpoints: the engine's directory, with the state's other entries as client state ---------------------
    @property
    def uses_checkpoint_io(self) -> bool:
        return False  # the engine writes its own directory

    def checkpoint_entries(self, state: dict[str, Any], filter: Filter) -> dict[str, Any]:
        """The entries other than the engine's model and optimizer, which the engine writes itself."""
        if filter:
            raise ValueError(f"filter={sorted(filter)} is not supported under DeepSpeed: the engine writes the whole "
                             "model and optimizer; save without filter")
        _, rest = self._split_state(state)
        return super().checkpoint_entries(rest, filter)

    def write_entries(self, path: str, entries: dict[str, Any], state: dict[str, Any]) -> None:
        """A directory: the engine's files (every rank writes its shards) under `TAG`, the entries as client state;
        built in a staging directory and swapped in."""
        engine, _ = self._split_state(state)
        client = {CLIENT_KEY: {key: value for key, value in entries.items() if key != RESERVED_KEY},
                  RESERVED_KEY: entries[RESERVED_KEY]}
        with self.checkpoint_directory(path) as staging:
            engine.save_checkpoint(str(staging), tag=TAG, client_state=client)

    def read_entries(self, path: str, state: dict[str, Any] | None, strict: bool, weights_only: bool) -> Any:
        """The engine loads its model (and optimizer, when `state` holds it) from the directory and hands back the
        client state: the other entries."""
        if state is None:
            raise ValueError(f"under DeepSpeed a checkpoint is loaded through the engine into the objects of a "
                             f"state dict, `fabric.load({path!r}, {{'model': model, 'optimizer': optimizer}})`; "
                             "to start from plain weights, load them into the model before "
                             "fabric.setup")
        self.verify_checkpoint_directory(path)
        engine, _ = self._split_state(state)
        wants_optimizer = any(unwrap(obj) is engine.optimizer for obj in state.values())
        with safe_loading(engine, path, weights_only, loads_optimizer=wants_optimizer):
            loaded, client = engine.load_checkpoint(path, tag=TAG, load_module_strict=strict,
                                                    load_optimizer_states=wants_optimizer,
                                                    load_lr_scheduler_states=False)
        if loaded is None:
            raise FileNotFoundError(f"checkpoint {path!r} holds no DeepSpeed checkpoint with tag {TAG!r}")
        return {**client[CLIENT_KEY], RESERVED_KEY: client[RESERVED_KEY]}

    def restore_entries(self, state: dict[str, Any], entries: dict[str, Any], strict: bool) -> dict[str, Any]:
        """The entries other than the engine's model and optimizer, which `read_entries` restored already."""
        _, rest = self._split_state(state)
        remainder = super().restore_entries(rest, entries, strict)
        state.update(rest)
        return remainder

    def load_raw(self, path: str, obj: Module | Optimizer, strict: bool = True) -> None:
        raise RuntimeError(f"load_raw({str(path)!r}) is not supported under DeepSpeed: the engine keeps its own "
                           "copies of the weights (fp32 masters, ZeRO partitions) that a plain state dict would "
                           "bypass. Load the weights into the model before `fabric.setup(model, optimizer)`: "
                           "`model.load_state_dict(torch.load(path))`")

    def _split_state(self, state: dict[str, Any]) -> tuple[DeepSpeedEngine, dict[str, Any]]:
        """The one engine whose model is in `state`, and the entries other than its model and optimizer."""
        found, rest = [], {}
        for key, obj in state.items():
            engine = self._engine_holding(obj)
            if engine is not None:
                found.append(engine)
            elif not any(unwrap(obj) is e.optimizer for e in self._engines):
                rest[key] = obj
        if len(found) != 1:
            raise ValueError(f"under DeepSpeed a checkpoint's state must hold exactly one model set up with "
                             f"fabric.setup; found {len(found)} among {sorted(state)}")
        return found[0], rest


def _gradient_norm(engine: DeepSpeedEngine) -> Tensor:
    """The total 2-norm of the engine's gradients over all ranks, unscaled, between backward and step: each
    parameter's full gradient is assembled from its partitions (`safe_get_full_grad`, the same on every rank)."""
    from deepspeed.utils import safe_get_full_grad
    squares = [grad.float().pow(2).sum() for parameter in engine.module.parameters() if parameter.requires_grad
               for grad in (safe_get_full_grad(parameter),) if grad is not None]
    norm = torch.stack(squares).sum().sqrt() if squares else torch.zeros((), device=engine.device)
    scale = getattr(engine.optimizer, "loss_scale", 1.0) if engine.fp16_enabled() else 1.0
    return norm / scale


def _set_clipping(engine: DeepSpeedEngine, max_norm: float) -> None:
    """The norm the engine clips to at its next step (0: none). DeepSpeed reads it from its config when it steps a
    plain optimizer and from its ZeRO / fp16 / bf16 optimizer's `clip_grad` otherwise; it offers no setter."""
    engine._config.gradient_clipping = max_norm
    if hasattr(engine.optimizer, "clip_grad"):
        engine.optimizer.clip_grad = max_norm


def _release_engines(engines: weakref.WeakKeyDictionary[DeepSpeedEngine, bool]) -> None:
    """Engines still alive at exit (ZeRO-3's hooks and partitioned parameters hold process groups) were otherwise
    freed by C++ static destruction, where gloo aborted finished ranks ("terminate called without an active
    exception", about one stage-3 run in three on CPU): release them while Python still runs."""
    for engine in list(engines):
        engine.destroy()
    gc.collect()


def _import_deepspeed() -> Any:
    try:
        import deepspeed
    except ImportError as error:
        raise ImportError(f"{_NEEDS_DEEPSPEED}, which cannot be imported ({error}): {INSTALL_HINT}") from error
    return deepspeed


def _read_config(config: dict[str, Any] | str | os.PathLike[str] | None) -> dict[str, Any] | None:
    if config is None or isinstance(config, dict):
        return copy.deepcopy(config)
    if not isinstance(config, (str, os.PathLike)):
        raise TypeError(f"config={config!r} is not accepted: pass a dict or the path of a DeepSpeed JSON config")
    path = Path(config)
    if not path.is_file():
        raise FileNotFoundError(f"DeepSpeed config {str(path)!r} does not exist")
    with open(path) as f:
        loaded: dict[str, Any] = json.load(f)
    return loaded


def _build_config(config: dict[str, Any] | None, stage: int | None, offload_optimizer: bool,
                  offload_parameters: bool, gradient_clipping: float | None,
                  gradient_accumulation_steps: int | None, micro_batch_size: int | None) -> dict[str, Any]:
    """`config` with the arguments written in (each must agree with a value already there) and the defaults."""
    if stage is None and config is None:
        stage = 2
    config = config or {}
    if stage is not None and stage not in (0, 1, 2, 3):
        raise ValueError(f"stage={stage!r} is not a ZeRO stage; accepted: 0, 1, 2, 3")
    zero = config.setdefault("zero_optimization", {})
    _put(zero, "stage", stage, "zero_optimization.stage")
    if offload_optimizer:
        _put(zero, "offload_optimizer", {"device": "cpu"}, "zero_optimization.offload_optimizer")
    if offload_parameters:
        if zero.get("stage", 0) != 3:
            raise ValueError(f"offload_parameters=True needs ZeRO stage 3 (parameters are partitioned only there); "
                             f"the stage is {zero.get('stage', 0)}")
        _put(zero, "offload_param", {"device": "cpu"}, "zero_optimization.offload_param")
    _put(config, "gradient_clipping", gradient_clipping, "gradient_clipping")
    _put(config, "gradient_accumulation_steps", gradient_accumulation_steps, "gradient_accumulation_steps")
    _put(config, "train_micro_batch_size_per_gpu", micro_batch_size, "train_micro_batch_size_per_gpu")
    if "train_batch_size" not in config:
        config.setdefault("train_micro_batch_size_per_gpu", 1)
    config.setdefault("zero_allow_untested_optimizer", True)
    return config


def _put(section: dict[str, Any], key: str, value: Any, name: str) -> None:
    if value is None:
        return
    if key in section and section[key] != value:
        raise ValueError(f"the DeepSpeed config sets {name}={section[key]!r} but the strategy argument asks for "
                         f"{value!r}; set it in one place")
    section[key] = value


def _as_deepspeed(precision: Precision) -> DeepSpeedPrecision:
    """The DeepSpeed counterpart of a precision, as Lightning chooses it under DeepSpeed."""
    if isinstance(precision, DeepSpeedPrecision):
        return precision
    if precision.precision != "32-true" and precision.precision not in _HALF:
        raise ValueError(f"precision={precision.precision!r} is not supported under DeepSpeed; accepted: 32-true, "
                         f"{', '.join(_HALF)}")
    return DeepSpeedPrecision(precision.precision)


def _apply_precision(config: dict[str, Any], precision: Precision) -> DeepSpeedPrecision:
    """Write Fabric's precision into the config's fp16/bf16 sections and return the precision the facade should
    use; with precision 32 the config's own half-precision section (if any) decides."""
    precision = _as_deepspeed(precision)
    enabled = [key for key in ("fp16", "bf16") if config.get(key, {}).get("enabled", False)]
    if precision.precision == "32-true":
        return DeepSpeedPrecision(f"{enabled[0].replace('fp', '')}-mixed") if enabled else precision
    key, _ = _HALF[precision.precision]
    if enabled and enabled != [key]:
        raise ValueError(f"precision={precision.precision!r} asks for DeepSpeed's {key!r} section but the config "
                         f"enables {enabled}; set the precision in one place")
    config.setdefault(key, {})["enabled"] = True
    return precision
