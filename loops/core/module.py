"""LightningModule: an nn.Module that also holds its training, evaluation and optimizer logic. The Trainer drives
it; the methods here are what a step may call back (log, optimizers, manual_backward, ...)."""
from __future__ import annotations

import io
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from loops.core import export
from loops.core.hooks import CheckpointHooks, DataHooks, ModelHooks
from loops.core.hparams import HyperparametersMixin
from loops.core.saving import (
    CHECKPOINT_HYPER_PARAMS_KEY,
    CHECKPOINT_HYPER_PARAMS_NAME,
    CHECKPOINT_HYPER_PARAMS_TYPE,
    load_from_checkpoint,
)

if TYPE_CHECKING:
    from fabric_kit import Fabric
    from loops.trainer.trainer import Trainer


class LightningModule(HyperparametersMixin, ModelHooks, DataHooks, CheckpointHooks, nn.Module):
    """Override `training_step` and `configure_optimizers` (and optionally the evaluation steps and hooks)."""

    # Where a checkpoint holds the hyperparameters, how they reach __init__, and their type (Lightning's keys).
    CHECKPOINT_HYPER_PARAMS_KEY = CHECKPOINT_HYPER_PARAMS_KEY
    CHECKPOINT_HYPER_PARAMS_NAME = CHECKPOINT_HYPER_PARAMS_NAME
    CHECKPOINT_HYPER_PARAMS_TYPE = CHECKPOINT_HYPER_PARAMS_TYPE

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._trainer: Trainer | None = None
        self._automatic_optimization = True
        self._strict_loading: bool | None = None
        self.example_input_array: Any = None
        self._param_requires_grad_state: dict[Tensor, bool] = {}
        self._fabric_ref: weakref.ref[Fabric] | None = None  # set by a plain Fabric's setup (`attach_fabric`)
        self._fabric_optimizers: list[Any] = []

    def __getstate__(self) -> dict[str, Any]:
        # A weak reference cannot be pickled (spawned ranks, deepcopy): the copy is not attached to a Fabric.
        return {**self.__dict__, "_fabric_ref": None, "_fabric_optimizers": []}

    # -- driven by a plain Fabric loop --------------------------------------------------------------------------
    def attach_fabric(self, fabric: Fabric, optimizers: list[Any] | None) -> None:
        """Called by `fabric.setup(self, *optimizers)` (fabric_kit's seam): `self.log`, `self.logger(s)`,
        `self.optimizers()`, `self.manual_backward`, `self.clip_gradients`, `self.print` and `self.all_gather`
        then go through that Fabric in a hand-written loop, as in Lightning. `optimizers` None (`setup_module`)
        keeps the optimizers already known."""
        self._fabric_ref = weakref.ref(fabric)
        if optimizers is not None:
            self._fabric_optimizers = list(optimizers)
        for child in self.children():
            if isinstance(child, LightningModule):
                child.attach_fabric(fabric, None)

    @property
    def _fabric(self) -> Fabric | None:
        reference = self._fabric_ref
        return None if reference is None else reference()

    # -- steps the user writes ----------------------------------------------------------------------------------
    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must define training_step(self, batch, batch_idx) to be "
                                  "fitted; it returns the loss (a tensor or a dict with 'loss') or None to skip")

    def configure_optimizers(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must define configure_optimizers() to be fitted")

    def predict_step(self, *args: Any, **kwargs: Any) -> Any:
        """By default the forward pass of the batch."""
        return self(kwargs.get("batch", args[0] if args else None))

    def configure_callbacks(self) -> Any:
        """Callbacks this model needs whatever the Trainer was given (they replace Trainer callbacks of the same
        type)."""
        return []

    # -- state the Trainer provides -----------------------------------------------------------------------------
    _jit_is_scripting = False  # set while torch.jit reads every attribute: `trainer` is then None, not an error

    @property
    def trainer(self) -> Trainer:
        if self._trainer is None and not self._jit_is_scripting:
            raise RuntimeError(f"{type(self).__name__} is not attached to a Trainer; this needs trainer.fit, "
                               "validate, test or predict to be running or to have run")
        return self._trainer  # type: ignore[return-value]  # None only while torch.jit reads the attributes

    @trainer.setter
    def trainer(self, trainer: Trainer | None) -> None:
        self._trainer = trainer

    @property
    def fabric(self) -> Fabric:
        """The Fabric that set this module up in a plain loop, else the Trainer's."""
        fabric = self._fabric
        return fabric if fabric is not None else self.trainer.fabric

    @property
    def device(self) -> torch.device:
        for param in self.parameters():
            return param.device
        for buffer in self.buffers():
            return buffer.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for param in self.parameters():
            return param.dtype
        return torch.get_default_dtype()

    @property
    def automatic_optimization(self) -> bool:
        return self._automatic_optimization

    @automatic_optimization.setter
    def automatic_optimization(self, value: bool) -> None:
        self._automatic_optimization = value

    @property
    def strict_loading(self) -> bool:
        """Whether a Trainer's `ckpt_path` must hold exactly this module's keys (set False for a checkpoint that
        left out, e.g., frozen weights)."""
        return self._strict_loading in (None, True)

    @strict_loading.setter
    def strict_loading(self, value: bool) -> None:
        self._strict_loading = value

    @property
    def current_epoch(self) -> int:
        return self._trainer.current_epoch if self._trainer is not None else 0

    @property
    def global_step(self) -> int:
        return self._trainer.global_step if self._trainer is not None else 0

    @property
    def global_rank(self) -> int:
        if self._trainer is None:
            fabric = self._fabric
            return fabric.global_rank if fabric is not None else 0
        return self._trainer.global_rank

    @property
    def local_rank(self) -> int:
        if self._trainer is None:
            fabric = self._fabric
            return fabric.local_rank if fabric is not None else 0
        return self._trainer.local_rank

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    @property
    def logger(self) -> Any:
        if self._trainer is None:
            fabric = self._fabric
            return fabric.logger if fabric is not None else None
        return self._trainer.logger

    @property
    def loggers(self) -> list[Any]:
        if self._trainer is None:
            fabric = self._fabric
            return fabric.loggers if fabric is not None else []
        return self._trainer.loggers

    @property
    def device_mesh(self) -> Any:
        """The strategy's device mesh, for `configure_model` to parallelize the model with (ModelParallelStrategy:
        dimensions "data_parallel" and "tensor_parallel"); None without a Trainer or under a strategy that has none."""
        return getattr(self._trainer.fabric.strategy, "device_mesh", None) if self._trainer is not None else None

    # -- logging ------------------------------------------------------------------------------------------------
    def log(self, name: str, value: Any, prog_bar: bool = False, logger: bool | None = None,
            on_step: bool | None = None, on_epoch: bool | None = None, reduce_fx: str | Callable = "mean",
            enable_graph: bool = False, sync_dist: bool = False, sync_dist_group: Any = None,
            add_dataloader_idx: bool = True, batch_size: int | None = None, metric_attribute: str | None = None,
            rank_zero_only: bool = False) -> None:
        """Record a scalar for this step and/or its epoch reduction (defaults depend on the hook: per step in
        training steps, per epoch elsewhere). The Trainer hands the values to callbacks, loggers and the bar."""
        trainer = self._trainer
        if trainer is None:
            if self._fabric is not None:  # a plain Fabric loop: straight to its loggers (none with logger=False)
                if logger is not False:
                    self._fabric.log(name, value)
                return
            raise RuntimeError(f"self.log({name!r}, ...) needs a running Trainer or a Fabric that set "
                               f"{type(self).__name__} up; it is attached to neither")
        trainer._log(name, value, prog_bar, True if logger is None else logger, on_step, on_epoch, reduce_fx,
                     enable_graph, sync_dist, sync_dist_group, add_dataloader_idx, batch_size, rank_zero_only)

    def log_dict(self, dictionary: Mapping[str, Any], prog_bar: bool = False, logger: bool | None = None,
                 on_step: bool | None = None, on_epoch: bool | None = None, reduce_fx: str | Callable = "mean",
                 enable_graph: bool = False, sync_dist: bool = False, sync_dist_group: Any = None,
                 add_dataloader_idx: bool = True, batch_size: int | None = None,
                 rank_zero_only: bool = False) -> None:
        for name, value in dictionary.items():
            self.log(name, value, prog_bar=prog_bar, logger=logger, on_step=on_step, on_epoch=on_epoch,
                     reduce_fx=reduce_fx, enable_graph=enable_graph, sync_dist=sync_dist,
                     sync_dist_group=sync_dist_group, add_dataloader_idx=add_dataloader_idx, batch_size=batch_size,
                     rank_zero_only=rank_zero_only)

    def print(self, *args: Any, **kwargs: Any) -> None:
        """`print` on global rank 0 only, through the progress bar when one is showing (so it stays intact)."""
        trainer = self._trainer
        if trainer is None:
            fabric = self._fabric
            (fabric.print if fabric is not None else print)(*args, **kwargs)
        elif trainer.is_global_zero:
            bar = trainer.progress_bar_callback
            (bar.print if bar is not None else print)(*args, **kwargs)

    # -- optimization -------------------------------------------------------------------------------------------
    def optimizers(self, use_pl_optimizer: bool = True) -> Any:
        """The optimizers from `configure_optimizers`, set up by the Trainer: one, or a list when several."""
        if self._trainer is None and self._fabric is not None:
            optimizers = self._fabric_optimizers
            return optimizers[0] if len(optimizers) == 1 else list(optimizers)
        trainer = self.trainer
        optimizers = trainer.run_state.optimizers if use_pl_optimizer else trainer.optimizers
        return optimizers[0] if len(optimizers) == 1 else list(optimizers)

    def lr_schedulers(self) -> Any:
        """None, one scheduler, or a list when several."""
        schedulers = [config.scheduler for config in self.trainer.lr_scheduler_configs]
        if not schedulers:
            return None
        return schedulers[0] if len(schedulers) == 1 else schedulers

    def manual_backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        """Use instead of `loss.backward()` with manual optimization: precision scaling and DDP sync apply."""
        if self._trainer is None and self._fabric is not None:
            self._fabric.backward(loss, *args, **kwargs)
            return
        self.trainer._manual_backward(loss, *args, **kwargs)

    def backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        """How a loss is backpropagated; override to customise (e.g. `retain_graph`)."""
        trainer = self.trainer
        trainer.fabric.backward(loss, *args, model=trainer.run_state.fabric_module, **kwargs)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any,
                       optimizer_closure: Callable[[], Any] | None = None) -> None:
        """Runs the closure (training_step, zero_grad, backward) and steps; override to warm up the LR etc."""
        optimizer.step(closure=optimizer_closure)

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: Any) -> None:
        optimizer.zero_grad()

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        """How the Trainer steps a scheduler (`metric` is the monitored value for ReduceLROnPlateau, else None);
        override for schedulers with another `step` signature (e.g. timm's `step(epoch)`)."""
        if metric is None:
            scheduler.step()
        else:
            scheduler.step(metric)

    def toggle_optimizer(self, optimizer: Any) -> None:
        """Freeze every parameter that `optimizer` does not train, so only its loss reaches its parameters."""
        own = {id(p) for group in optimizer.param_groups for p in group["params"]}
        state = self._param_requires_grad_state
        for opt in self.trainer.run_state.optimizers:
            for group in opt.param_groups:
                for param in group["params"]:
                    if id(param) not in own:
                        state.setdefault(param, param.requires_grad)
                        param.requires_grad = False
        for group in optimizer.param_groups:
            for param in group["params"]:
                if param in state:
                    param.requires_grad = state[param]

    def untoggle_optimizer(self, optimizer: Any) -> None:
        """Undo `toggle_optimizer`: restore every parameter's `requires_grad`."""
        for param, requires_grad in self._param_requires_grad_state.items():
            param.requires_grad = requires_grad
        self._param_requires_grad_state = {}

    @contextmanager
    def toggled_optimizer(self, optimizer: Any) -> Iterator[None]:
        """`toggle_optimizer(optimizer)` for the block, `untoggle_optimizer` after it (also when it raises): inside,
        only `optimizer`'s parameters require gradients."""
        self.toggle_optimizer(optimizer)
        try:
            yield
        finally:
            self.untoggle_optimizer(optimizer)

    def clip_gradients(self, optimizer: Any, gradient_clip_val: float | None = None,
                       gradient_clip_algorithm: str | None = None) -> None:
        """Clip by norm (default) or value through the strategy, which unscales fp16 gradients first. Under a
        Trainer, None takes the Trainer's `gradient_clip_val` / `gradient_clip_algorithm`, and another value than a
        `gradient_clip_val` given to the Trainer is an error (Lightning's rule: set it in one place)."""
        if self._trainer is not None:
            given = self._trainer.gradient_clip_val
            if gradient_clip_val is None:
                gradient_clip_val = given
            elif given is not None and given != gradient_clip_val:
                raise ValueError(f"Trainer(gradient_clip_val={given!r}) and clip_gradients(gradient_clip_val="
                                 f"{gradient_clip_val!r}) disagree; give the value in only one of them")
            gradient_clip_algorithm = gradient_clip_algorithm or self._trainer.gradient_clip_algorithm
        if gradient_clip_val is None or gradient_clip_val == 0:
            return
        algorithm = gradient_clip_algorithm or "norm"
        module: nn.Module
        if self._trainer is None and self._fabric is not None:
            fabric, module = self._fabric, self
        else:
            fabric, module = self.trainer.fabric, self.trainer.run_state.fabric_module
        optimizer = getattr(optimizer, "optimizer", optimizer)
        if algorithm == "norm":
            fabric.clip_gradients(module, optimizer, max_norm=gradient_clip_val, error_if_nonfinite=False)
        elif algorithm == "value":
            fabric.clip_gradients(module, optimizer, clip_val=gradient_clip_val)
        else:
            raise ValueError(f"gradient_clip_algorithm must be 'norm' or 'value'; got {algorithm!r}")

    def configure_gradient_clipping(self, optimizer: Any, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Called before every optimizer step with the Trainer's clipping settings; override to clip differently."""
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # -- utilities ----------------------------------------------------------------------------------------------
    def to_onnx(self, file_path: str | Path | io.BytesIO | None = None, input_sample: Any = None,
                **kwargs: Any) -> Any:
        """Export to ONNX with `input_sample` (default: `self.example_input_array`); kwargs go to
        torch.onnx.export. Needs `pip install 'fabric_kit[onnx]'`."""
        return export.to_onnx(self, file_path, input_sample, **kwargs)

    def to_torchscript(self, file_path: str | Path | None = None, method: str = "script",
                       example_inputs: Any = None, **kwargs: Any) -> torch.jit.ScriptModule:
        """A TorchScript module, by `torch.jit.script` ("script") or `torch.jit.trace` ("trace"); saved to
        `file_path` when given."""
        return export.to_torchscript(self, file_path, method, example_inputs, **kwargs)

    def freeze(self) -> None:
        """No gradients and eval mode, e.g. for a frozen backbone or inference."""
        for param in self.parameters():
            param.requires_grad = False
        self.eval()

    def unfreeze(self) -> None:
        for param in self.parameters():
            param.requires_grad = True
        self.train()

    def all_gather(self, data: Any, group: Any = None, sync_grads: bool = False) -> Any:
        return self.fabric.all_gather(data, group=group, sync_grads=sync_grads)

    load_from_checkpoint: classmethod[Any, ..., Any] = classmethod(load_from_checkpoint)


# torch.jit.script must not compile (or even read) the Trainer-facing properties: most need a running Trainer.
LightningModule.__jit_unused_properties__ = sorted(  # type: ignore[attr-defined]
    name for klass in LightningModule.__mro__ if klass is not nn.Module
    for name, value in vars(klass).items() if isinstance(value, property))
