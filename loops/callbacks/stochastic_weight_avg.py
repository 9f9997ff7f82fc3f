"""Stochastic Weight Averaging (Izmailov et al., 2018): from `swa_epoch_start` on, the learning rate anneals to
`swa_lrs` and the weights at the end of every epoch are averaged; when training ends the model takes the average
and its BatchNorm statistics are recomputed for it with one pass over the training data."""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import SWALR

from loops.callbacks.callback import Callback
from loops.core.optimizer_config import SchedulerConfig
from loops.logging.results import Results
from loops.trainer.data import batches

if TYPE_CHECKING:
    from loops.trainer.trainer import Trainer

AverageFn = Callable[[Tensor, Tensor, Tensor], Tensor]
_CPU = torch.device("cpu")


class StochasticWeightAveraging(Callback):
    """Average the weights of the last epochs (Lightning's arguments).

    swa_lrs: the learning rate the SWA epochs anneal to: one float, or one per parameter group.
    swa_epoch_start: the first averaged epoch, 1-based (an int >= 1), or a fraction of max_epochs (a float in [0, 1]).
    annealing_epochs / annealing_strategy: how many epochs the annealing takes, "cos" or "linear".
    avg_fn: (averaged, current, number averaged so far) -> new average; default the running mean.
    device: where the average lives (default the CPU; None: the model's device).

    Unlike Lightning, which averages the weights at the *start* of each SWA epoch (so the last epoch's training is
    left out), the average here takes the weights at the *end* of each SWA epoch, as torch.optim.swa_utils
    recommends. The averaged weights and recomputed BatchNorm statistics are put in at the end of the last epoch
    (before that epoch's checkpoints are written), or when training stops early. Sharded strategies (FSDP,
    DeepSpeed) and several optimizers are not supported."""

    def __init__(self, swa_lrs: float | list[float], swa_epoch_start: int | float = 0.8, annealing_epochs: int = 10,
                 annealing_strategy: str = "cos", avg_fn: AverageFn | None = None,
                 device: torch.device | str | None = _CPU) -> None:
        lrs = swa_lrs if isinstance(swa_lrs, list) else [swa_lrs]
        if not lrs or not all(isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr > 0 for lr in lrs):
            raise ValueError(f"swa_lrs={swa_lrs!r}: pass a positive float, or a list of positive floats (one per "
                             "parameter group)")
        if isinstance(swa_epoch_start, bool) or not isinstance(swa_epoch_start, (int, float)) or \
                (isinstance(swa_epoch_start, int) and swa_epoch_start < 1) or \
                (isinstance(swa_epoch_start, float) and not 0.0 <= swa_epoch_start <= 1.0):
            raise ValueError(f"swa_epoch_start={swa_epoch_start!r}: pass an int >= 1 (the first averaged epoch, "
                             "1-based) or a float in [0, 1] (a fraction of max_epochs)")
        if isinstance(annealing_epochs, bool) or not isinstance(annealing_epochs, int) or annealing_epochs < 0:
            raise ValueError(f"annealing_epochs={annealing_epochs!r}: pass an int >= 0")
        if annealing_strategy not in ("cos", "linear"):
            raise ValueError(f"annealing_strategy={annealing_strategy!r}: accepted 'cos' or 'linear'")
        if avg_fn is not None and not callable(avg_fn):
            raise ValueError(f"avg_fn={avg_fn!r} is not callable; pass f(averaged, current, num_averaged) or None")
        self._swa_lrs = swa_lrs
        self._swa_epoch_start = swa_epoch_start
        self._annealing_epochs, self._annealing_strategy = annealing_epochs, annealing_strategy
        self._avg_fn = avg_fn or self.avg_fn
        self._device = torch.device(device) if isinstance(device, str) else device
        self._max_epochs = -1
        self._average: list[Tensor] | None = None
        self.n_averaged = 0
        self._latest_update_epoch = -1
        self._transferred = False
        self._swa_scheduler: SWALR | None = None
        self._scheduler_state: dict[str, Any] | None = None

    @property
    def swa_start(self) -> int:
        """The first averaged epoch, 0-based."""
        return max(int(self._swa_epoch_start) - 1, 0)

    @property
    def swa_end(self) -> int | float:
        """The last averaged epoch, 0-based (infinite when max_epochs=-1)."""
        return math.inf if self._max_epochs == -1 else self._max_epochs - 1

    @staticmethod
    def avg_fn(averaged: Tensor, current: Tensor, num_averaged: Tensor) -> Tensor:
        """The running mean: `num_averaged` values are in `averaged`, `current` is the next one."""
        return averaged + (current - averaged) / (num_averaged + 1)

    @staticmethod
    def pl_module_contains_batch_norm(pl_module: nn.Module) -> bool:
        return any(isinstance(module, nn.modules.batchnorm._BatchNorm) for module in pl_module.modules())

    # -- hooks ----------------------------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        strategy = trainer.fabric.strategy
        if stage == "fit" and (strategy.shards_parameters or strategy.owns_optimizer):
            raise ValueError(f"StochasticWeightAveraging averages whole weights, which the {type(strategy).__name__} "
                             "shards or keeps in its engine's optimizer. Use another strategy (e.g. ddp) or remove "
                             "the callback")

    def on_fit_start(self, trainer: Trainer, pl_module: Any) -> None:
        if len(trainer.optimizers) != 1:
            raise ValueError(f"StochasticWeightAveraging works with one optimizer; configure_optimizers returned "
                             f"{len(trainer.optimizers)}")
        if len(trainer.lr_scheduler_configs) > 1:
            raise ValueError(f"StochasticWeightAveraging replaces one learning-rate scheduler; configure_optimizers "
                             f"returned {len(trainer.lr_scheduler_configs)}")
        self._max_epochs = trainer.fit_loop.epoch_limit
        if isinstance(self._swa_epoch_start, float):
            if self._max_epochs == -1:
                raise ValueError(f"swa_epoch_start={self._swa_epoch_start} is a fraction of max_epochs, which is -1 "
                                 "(unlimited); pass an int epoch instead")
            self._swa_epoch_start = int(self._max_epochs * self._swa_epoch_start)
        if self.pl_module_contains_batch_norm(pl_module) and not pl_module.automatic_optimization:
            raise ValueError("StochasticWeightAveraging recomputes BatchNorm statistics by running training_step "
                             "without gradients, which manual optimization (manual_backward) cannot do")

    def on_train_epoch_start(self, trainer: Trainer, pl_module: Any) -> None:
        if self._swa_scheduler is None and self.swa_start <= trainer.current_epoch <= self.swa_end:
            self._start_annealing(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: Any) -> None:
        epoch = trainer.current_epoch
        if self.swa_start <= epoch <= self.swa_end and epoch > self._latest_update_epoch:
            self.update_parameters(pl_module)
            self._latest_update_epoch = epoch
        if epoch == self.swa_end:
            self._transfer(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: Any) -> None:
        self._transfer(trainer, pl_module)  # training stopped before the last epoch

    # -- averaging ------------------------------------------------------------------------------------------------
    def _start_annealing(self, trainer: Trainer) -> None:
        optimizer = trainer.optimizers[0]
        lrs = self._swa_lrs if isinstance(self._swa_lrs, list) else [self._swa_lrs] * len(optimizer.param_groups)
        if len(lrs) != len(optimizer.param_groups):
            raise ValueError(f"swa_lrs has {len(lrs)} values but the optimizer has {len(optimizer.param_groups)} "
                             "parameter groups")
        current = [group["lr"] for group in optimizer.param_groups]
        swa_lrs: Any = [float(lr) for lr in lrs]  # one per parameter group (SWALR takes a list too)
        self._swa_scheduler = SWALR(optimizer, swa_lr=swa_lrs, anneal_epochs=self._annealing_epochs,
                                    anneal_strategy="cos" if self._annealing_strategy == "cos" else "linear")
        if self._scheduler_state is not None:  # resumed: the restored learning rates continue the annealing
            self._swa_scheduler.load_state_dict(self._scheduler_state)
            for group, lr in zip(optimizer.param_groups, current, strict=False):
                group["lr"] = lr
        config = SchedulerConfig(self._swa_scheduler, interval="epoch")
        if trainer.lr_scheduler_configs:
            trainer.lr_scheduler_configs[0] = config
        else:
            trainer.lr_scheduler_configs.append(config)

    def update_parameters(self, pl_module: nn.Module) -> None:
        """Fold the module's current weights into the average."""
        params = [p.detach() for p in pl_module.parameters()]
        if self._average is None:
            device = self._device or params[0].device
            self._average = [p.to(device, copy=True) for p in params]
        else:
            count = torch.tensor(self.n_averaged)
            for average, param in zip(self._average, params, strict=False):
                average.copy_(self._avg_fn(average, param.to(average.device), count.to(average.device)))
        self.n_averaged += 1

    def _transfer(self, trainer: Trainer, pl_module: nn.Module) -> None:
        if self._transferred or self._average is None:
            return
        self._transferred = True
        with torch.no_grad():
            for average, param in zip(self._average, pl_module.parameters(), strict=False):
                param.copy_(average.to(param.device))
        if self.pl_module_contains_batch_norm(pl_module):
            recompute_batch_norm(trainer, pl_module)

    # -- checkpoints ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"n_averaged": self.n_averaged, "latest_update_epoch": self._latest_update_epoch,
                "scheduler_state": None if self._swa_scheduler is None else self._swa_scheduler.state_dict(),
                "average": None if self._average is None else [a.cpu() for a in self._average]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Also Lightning's state (no "average" entry) from before averaging began."""
        if "average" not in state_dict and state_dict["n_averaged"]:
            raise ValueError("this checkpoint's StochasticWeightAveraging state is Lightning's, saved after averaging "
                             "began (Lightning averages at each SWA epoch's start, into an AveragedModel): it cannot "
                             "be continued here; resume from a checkpoint saved before swa_epoch_start")
        self.n_averaged = state_dict["n_averaged"]
        self._latest_update_epoch = state_dict["latest_update_epoch"]
        self._scheduler_state = state_dict["scheduler_state"]
        average = state_dict.get("average")
        self._average = None if average is None else [a.to(self._device or a.device) for a in average]

    def on_load_checkpoint(self, trainer: Trainer, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        if self._scheduler_state is not None:
            # The checkpoint's scheduler is the SWA one: rebuild it now, so the Trainer restores its state into it
            # (not into the scheduler configure_optimizers returned) and finishes the saved epoch with it.
            self._start_annealing(trainer)


def recompute_batch_norm(trainer: Trainer, pl_module: nn.Module) -> None:
    """One pass of `training_step` over the training data without gradients, every BatchNorm layer averaging the
    statistics of all batches (momentum None), so the statistics match the current weights. Logs are dropped."""
    momenta = {}
    for module in pl_module.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            momenta[module] = module.momentum
            module.momentum = None
    was_training = pl_module.training
    pl_module.train()
    state = trainer.run_state
    try:
        with torch.no_grad(), state.logging_scope(Results(trainer.fabric), per_step=True) as scope:
            for batch_idx, batch in enumerate(batches(trainer.fit_loop.train_loader)):
                if batch_idx >= trainer.num_training_batches:
                    break
                if state.custom_transfer:
                    batch = state.hooks.transfer(batch, 0, trainer.fabric.device)
                scope.batch = batch
                state.fabric_module("training_step", batch, batch_idx)
    finally:
        for module, momentum in momenta.items():
            module.momentum = momentum
        pl_module.train(was_training)
