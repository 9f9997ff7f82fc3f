"""One training step, automatic or manual. Automatic: a closure runs training_step, zero_grad (first micro-batch
of each accumulation window), backward; then clipping and the optimizer step — Lightning's order. Gradient
accumulation runs each batch as a micro-batch of `fabric.accumulate`: no gradient sync until the window's last
batch, the loss divided by `accumulate_grad_batches` (Lightning's) or weighted by the items of the window over the
ranks (`Trainer(accumulate_num_items=...)`, a fabric_kit extension).

Several optimizers with automatic optimization (beyond Lightning 2.x, as Lightning 1.x did it): when
`configure_optimizers` returns several, `training_step(self, batch, batch_idx, optimizer_idx)` runs once per
optimizer, in order, and each run is a complete closure of its own: only that optimizer's parameters require
gradients (`toggle_optimizer`), its loss is backpropagated, clipped and stepped, with accumulation and its own
schedulers. Every optimizer step counts in `global_step` (two optimizers: two per batch, as in manual
optimization); `on_train_batch_end` receives the list of the step outputs. Under DDP the parameters frozen by the
toggle receive no gradient, so use strategy="ddp_find_unused_parameters_true".

With `Trainer(on_oom="reduce")` each batch is one attempt agreed on by the ranks (`fabric_kit.out_of_memory`); after an
out-of-memory error the batch runs again as more micro-batches (`oom.py`): its closure runs training_step,
zero_grad (first micro-batch) and backward once per micro-batch, the last one syncing the gradients.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from torch import Tensor
from torch.optim import Optimizer

from fabric_kit.out_of_memory import OutOfMemoryAgreement, free_memory
from loops.trainer.oom import batch_rows, split_batch
from loops.utilities.rank_zero import rank_zero_warn

if TYPE_CHECKING:
    from fabric_kit.accumulation import MicroBatch
    from loops.core.module import LightningModule
    from loops.trainer.trainer import Trainer


class LoopOptimizer:
    """What `self.optimizers()` returns: fabric's optimizer, with `step` counting `trainer.global_step` and calling
    the `on_before_optimizer_step` hooks (and, in automatic optimization, gradient clipping) first."""

    def __init__(self, optimizer: Any, trainer: Trainer) -> None:
        self._optimizer = optimizer
        self._trainer = trainer

    @property
    def optimizer(self) -> Optimizer:
        """The user's torch optimizer."""
        optimizer: Optimizer = self._optimizer.optimizer
        return optimizer

    @property
    def fabric_optimizer(self) -> Any:
        """What fabric set up (a FabricOptimizer): what checkpoints save and restore."""
        return self._optimizer

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        groups: list[dict[str, Any]] = self._optimizer.param_groups
        return groups

    @property
    def state(self) -> Any:
        return self._optimizer.state

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = self._optimizer.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._optimizer.load_state_dict(state_dict)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure: Callable[[], Any] | None = None, **kwargs: Any) -> Any:
        """Step the optimizer; with a `closure` (the Trainer's, in automatic optimization) it runs first, and the
        torch optimizer receives it too, so one that evaluates the loss several times (LBFGS) re-runs the whole
        closure (step, backward, the hooks and clipping) as under Lightning. Returns the closure's loss."""
        trainer = self._trainer
        state = trainer.run_state
        if closure is None:
            self._before_step()
            output = self._optimizer.step(**kwargs)
            state.progress.optimizer_stepped()
            return output
        loss = closure()
        if loss is None and state.automatic:
            # training_step returned None: no backward, no step (Lightning counts it)
            state.progress.optimizer_stepped()
            return None
        self._before_step()
        first = [loss]  # the optimizer's first evaluation is the one that just ran

        def evaluate() -> Any:
            if first:
                return first.pop()
            again = closure()
            self._before_step()
            return again

        output = self._optimizer.step(closure=evaluate, **kwargs)
        state.progress.optimizer_stepped()
        return loss if output is None else output

    def _before_step(self) -> None:
        """The `on_before_optimizer_step` hooks, then (automatic optimization) gradient clipping."""
        trainer = self._trainer
        state = trainer.run_state
        hooks = state.hooks
        raw = self._optimizer.optimizer
        for hook, is_callback in hooks.both("on_before_optimizer_step"):
            hook(trainer, hooks.pl_module, raw) if is_callback else hook(raw)
        if state.clip_hook is not None:
            state.clip_hook(raw, trainer.gradient_clip_val, trainer.gradient_clip_algorithm)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._optimizer, name)

    def __repr__(self) -> str:
        return f"LoopOptimizer({self._optimizer.optimizer!r})"


class AutomaticStep:
    """Runs one batch of automatic optimization; built once per epoch so the per-batch path is a few lookups."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        state = trainer.run_state
        hooks = state.hooks
        self.fabric_module = state.fabric_module
        self.run_step = hooks.steps(state.fabric_module)
        self.module = hooks.pl_module
        self.progress = state.progress
        self.optimizers = list(state.optimizers)
        self.optimizer = self.optimizers[0] if self.optimizers else None
        self.before_zero_grad = hooks.both("on_before_zero_grad")
        self.before_backward = hooks.both("on_before_backward")
        self.after_backward = hooks.both("on_after_backward")
        self.optimizer_step = hooks.method("optimizer_step")
        self.zero_grad = hooks.method("optimizer_zero_grad")
        # Lightning records the backward as its strategy's (which calls the module's `backward`)
        self.backward = hooks.profiled(hooks.strategy_action("backward"), hooks.pl_module.backward)
        self.output: Any = None
        self.micro: MicroBatch | None = None
        self.fabric = trainer.fabric
        self.backwards = 0  # backward calls of the batch's current attempt (on_oom="reduce")
        if trainer.on_oom == "reduce" and len(self.optimizers) > 1:
            raise ValueError(f"on_oom='reduce' runs a batch again after an out-of-memory error, which "
                             f"{len(self.optimizers)} optimizers stepping one after the other in a batch do not "
                             "allow; use one optimizer or on_oom='raise'")

    def run(self, batch: Any, batch_idx: int, micro: MicroBatch | None) -> Any:
        """Returns training_step's output as on_train_batch_end receives it (a list, one per optimizer, when
        there are several). `micro`: the batch's place in an accumulation window (`fabric.accumulate`), None
        without accumulation. With on_oom="reduce", a batch that runs out of memory on any rank runs again on
        every rank as more micro-batches."""
        if self.trainer.on_oom == "raise":
            return self._run(batch, batch_idx, micro)
        while True:
            self.backwards = 0
            with OutOfMemoryAgreement(self.fabric) as attempt:
                output = self._run(batch, batch_idx, micro)
            if not attempt.failed:
                return output
            free_memory()
            self._split_further(batch, batch_idx, micro, attempt.ran_out_here)

    def _split_further(self, batch: Any, batch_idx: int, micro: MicroBatch | None, ran_out_here: bool) -> None:
        """Double `trainer.oom_splits` after an attempt at batch `batch_idx` ran out of memory, or raise where the
        batch cannot run again exactly."""
        trainer = self.trainer
        # This attempt's gradients so far: none if no backward ran (a peer's failure stops this rank in the check
        # before its backward); they are zeroed again by a window's first batch, not by a later one.
        touched = self.backwards > (0 if ran_out_here else 1)
        if touched and micro is not None and micro.index > 0:
            raise RuntimeError(f"on_oom='reduce': batch {batch_idx} ran out of memory after part of its gradients "
                               "were added to its accumulation window's, so it cannot run again exactly; lower the "
                               "batch size or accumulate_grad_batches")
        rows = batch_rows(batch)
        if trainer.oom_splits >= rows:
            raise RuntimeError(f"on_oom='reduce': batch {batch_idx} ran out of memory even as micro-batches of one "
                               f"row ({rows} of them); lower the batch size or free memory")
        trainer.oom_splits = min(rows, 2 * trainer.oom_splits)
        rank_zero_warn(f"out of memory at batch {batch_idx} (on some rank): each batch now runs as "
                       f"{trainer.oom_splits} micro-batches of about {-(-rows // trainer.oom_splits)} rows")

    def _run(self, batch: Any, batch_idx: int, micro: MicroBatch | None) -> Any:
        self.micro = micro
        optimizer = self.optimizer
        if optimizer is None:  # configure_optimizers returned None: only the step runs
            self.output = None
            self._closure(batch, batch_idx, None, ())
            return self.output
        if len(self.optimizers) == 1:
            return self._run_optimizer(batch, batch_idx, micro, optimizer, ())
        outputs = []
        module = self.module
        for index, optimizer in enumerate(self.optimizers):
            module.toggle_optimizer(optimizer)
            try:
                outputs.append(self._run_optimizer(batch, batch_idx, micro, optimizer, (index,)))
            finally:
                module.untoggle_optimizer(optimizer)
        return outputs

    def _run_optimizer(self, batch: Any, batch_idx: int, micro: MicroBatch | None, optimizer: LoopOptimizer,
                       extra: tuple[int, ...]) -> Any:
        self.output = None
        if micro is None:
            self.optimizer_step(self.progress.current_epoch, batch_idx, optimizer,
                                lambda: self._closure(batch, batch_idx, optimizer, extra))
            return self.output
        with micro:  # the gradients are all-reduced by the window's last backward only
            if micro.is_last:
                self.optimizer_step(self.progress.current_epoch, batch_idx, optimizer,
                                    lambda: self._closure(batch, batch_idx, optimizer, extra))
            else:
                self._closure(batch, batch_idx, optimizer, extra)
        return self.output

    def _closure(self, batch: Any, batch_idx: int, optimizer: LoopOptimizer | None,
                 extra: tuple[int, ...]) -> Tensor | None:
        splits = self.trainer.oom_splits
        if splits == 1:
            return self._micro_batch(batch, batch_idx, optimizer, extra, True, None)
        pieces = split_batch(batch, splits, self.trainer.accumulate_num_items)
        losses, outputs = [], []
        for index, (piece, share) in enumerate(pieces):
            with self.fabric.no_backward_sync(self.fabric_module, enabled=index < len(pieces) - 1):
                loss = self._micro_batch(piece, batch_idx, optimizer, extra, index == 0, share)
            if loss is not None:
                losses.append(loss.detach())
                outputs.append((self.output, share))
        if not outputs:
            self.output = None
            return None
        # The batch's output: its mean loss, the other keys from its last micro-batch.
        self.output = {**outputs[-1][0], "loss": sum(out["loss"] * share for out, share in outputs)}
        total: Tensor = sum(losses[1:], losses[0])
        return total

    def _micro_batch(self, batch: Any, batch_idx: int, optimizer: LoopOptimizer | None, extra: tuple[int, ...],
                     first: bool, share: float | None) -> Tensor | None:
        """training_step, zero_grad (`first` micro-batch of a window) and backward of the loss, weighed by
        `share` of the batch (on_oom="reduce" split it) and by the accumulation window."""
        output = self.run_step("training_step", batch, batch_idx, *extra)
        if isinstance(output, Tensor):
            loss = output
            self.output = {"loss": loss.detach()}
        elif isinstance(output, dict):
            if "loss" not in output:
                raise KeyError(f"training_step returned a dict without 'loss' (keys: {sorted(output)}); with "
                               "automatic optimization the dict must hold the loss under 'loss'")
            loss = output["loss"]
            self.output = {**output, "loss": loss.detach()}
        elif output is None:
            return None
        else:
            raise TypeError(f"training_step returned a {type(output).__name__}; accepted: a loss tensor, a dict "
                            "with 'loss', or None to skip the batch")
        trainer, module, micro = self.trainer, self.module, self.micro
        if optimizer is not None and first and (micro is None or micro.index == 0):
            for hook, is_callback in self.before_zero_grad:
                hook(trainer, module, optimizer.optimizer) if is_callback else hook(optimizer.optimizer)
            self.zero_grad(self.progress.current_epoch, batch_idx, optimizer)
        if share is not None:
            loss = loss * share
        if micro is not None:
            loss = micro.scale(loss)  # by the window's length, or by the items (`accumulate_num_items`)
        for hook, is_callback in self.before_backward:
            hook(trainer, module, loss) if is_callback else hook(loss)
        self.backwards += 1
        self.backward(loss)
        for hook, is_callback in self.after_backward:
            hook(trainer, module) if is_callback else hook()
        return loss


def check_automatic_optimizers(module: LightningModule, count: int) -> None:
    """Several optimizers with automatic optimization need `training_step(batch, batch_idx, optimizer_idx)`."""
    if count <= 1:
        return
    parameters: Mapping[str, inspect.Parameter]
    try:
        parameters = inspect.signature(module.training_step).parameters
    except (TypeError, ValueError):
        parameters = {}
    if "optimizer_idx" not in parameters:
        raise ValueError(f"configure_optimizers returned {count} optimizers. With automatic optimization, define "
                         "training_step(self, batch, batch_idx, optimizer_idx): it runs once per optimizer and "
                         "returns that optimizer's loss. Or set self.automatic_optimization = False and step them "
                         "in training_step")


def manual_backward(trainer: Trainer, loss: Tensor, *args: Any, **kwargs: Any) -> None:
    """`self.manual_backward(loss)`: the backward hooks around the module's `backward` (fabric's backward)."""
    hooks = trainer.run_state.hooks
    module = hooks.pl_module
    for hook, is_callback in hooks.both("on_before_backward"):
        hook(trainer, module, loss) if is_callback else hook(loss)
    module.backward(loss, *args, **kwargs)
    for hook, is_callback in hooks.both("on_after_backward"):
        hook(trainer, module) if is_callback else hook()
