"""Weight averaging after optimizer steps (Lightning 2.6's WeightAveraging and EMAWeightAveraging): an averaged
copy of the model (torch.optim.swa_utils.AveragedModel) follows training; validation runs on the average, and the
model takes it when training ends."""
from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn

from loops.callbacks.callback import Callback

if TYPE_CHECKING:
    from loops.trainer.trainer import Trainer


class WeightAveraging(Callback):
    """Keep an `AveragedModel` of the LightningModule, updated when `should_update` says so (by default after every
    optimizer step). `kwargs` go to AveragedModel (`avg_fn`, `multi_avg_fn`; the default is the plain mean, SWA);
    `use_buffers` averages buffers too (BatchNorm statistics) instead of leaving them to the user; `device` is where
    the average lives (default: the model's device).

    Checkpoints hold the average under "state_dict" (so `load_from_checkpoint` gives the averaged model) and the
    training weights under "current_model_state", from which fit resumes exactly. Sharded models are not
    supported."""

    def __init__(self, device: torch.device | str | int | None = None, use_buffers: bool = True,
                 **kwargs: Any) -> None:
        self._device = torch.device(device) if isinstance(device, str) else device
        self._use_buffers = use_buffers
        self._kwargs = kwargs
        self._average_model: AveragedModel | None = None
        self._latest_update_step = 0
        self._latest_update_epoch = -1

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        """Called with the 0-based index of the optimizer step just taken, or of the epoch just ended; override to
        choose when the average is updated. Default: after every optimizer step."""
        return step_idx is not None

    # -- hooks ----------------------------------------------------------------------------------------------------
    def on_fit_start(self, trainer: Trainer, pl_module: Any) -> None:
        self._ensure_average_model(pl_module)

    def on_train_batch_end(self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step > self._latest_update_step and self.should_update(step_idx=trainer.global_step - 1):
            self._ensure_average_model(pl_module).update_parameters(pl_module)
            self._latest_update_step = trainer.global_step

    def on_train_epoch_end(self, trainer: Trainer, pl_module: Any) -> None:
        if trainer.current_epoch > self._latest_update_epoch and self.should_update(epoch_idx=trainer.current_epoch):
            self._ensure_average_model(pl_module).update_parameters(pl_module)
            self._latest_update_epoch = trainer.current_epoch

    def on_train_end(self, trainer: Trainer, pl_module: Any) -> None:
        for average, current in self._pairs(pl_module):
            current.data.copy_(average.data)

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: Any) -> None:
        if self._average_model is not None:
            self._swap(pl_module)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: Any) -> None:
        if self._average_model is not None:
            self._swap(pl_module)

    # -- checkpoints ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"latest_update_step": self._latest_update_step, "latest_update_epoch": self._latest_update_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._latest_update_step = state_dict["latest_update_step"]
        self._latest_update_epoch = state_dict.get("latest_update_epoch", -1)

    def on_save_checkpoint(self, trainer: Trainer, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        """The average goes under "state_dict" (what load_from_checkpoint reads), the training weights under
        "current_model_state", the averaging counters under "averaging_state" (Lightning's layout)."""
        if self._average_model is None:
            return
        average = self._average_model.state_dict()
        checkpoint["current_model_state"] = checkpoint["state_dict"]
        checkpoint["state_dict"] = {name[len("module."):]: value for name, value in average.items()
                                    if name.startswith("module.")}
        checkpoint["averaging_state"] = {name: value for name, value in average.items()
                                         if not name.startswith("module.")}

    def on_load_checkpoint(self, trainer: Trainer, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        """Resuming fit: the average from "state_dict", the training weights from "current_model_state"; a
        checkpoint written without this callback starts the average from its weights."""
        average_model = self._ensure_average_model(pl_module)
        if "current_model_state" in checkpoint and "averaging_state" in checkpoint:
            average = {f"module.{name}": value for name, value in checkpoint["state_dict"].items()}
            average_model.load_state_dict({**average, **checkpoint["averaging_state"]})
            pl_module.load_state_dict(checkpoint["current_model_state"])
        else:
            average_model.module.load_state_dict(checkpoint["state_dict"], strict=False)

    # -- the average ----------------------------------------------------------------------------------------------
    def _ensure_average_model(self, pl_module: Any) -> AveragedModel:
        """The average; made on first use as a copy of the set-up module (after configure_model, on its device)
        without its Trainer."""
        if self._average_model is None:
            trainer, pl_module.trainer = pl_module.trainer, None
            try:
                self._average_model = AveragedModel(pl_module, device=self._device or pl_module.device,
                                                    use_buffers=self._use_buffers, **self._kwargs)
            finally:
                pl_module.trainer = trainer
        return self._average_model

    def _pairs(self, pl_module: nn.Module) -> Any:
        average = self._ensure_average_model(pl_module).module
        return zip(itertools.chain(average.parameters(), average.buffers()),
                   itertools.chain(pl_module.parameters(), pl_module.buffers()), strict=False)

    def _swap(self, pl_module: nn.Module) -> None:
        for average, current in self._pairs(pl_module):
            kept = average.data.clone()
            average.data.copy_(current.data)
            current.data.copy_(kept)


class EMAWeightAveraging(WeightAveraging):
    """An exponential moving average of the weights: average = decay * average + (1 - decay) * weights, updated
    every `update_every_n_steps` optimizer steps from step `update_starting_at_step` (0-based) on, and/or at the
    end of every epoch from `update_starting_at_epoch` on."""

    def __init__(self, device: torch.device | str | int | None = None, use_buffers: bool = True, decay: float = 0.999,
                 update_every_n_steps: int = 1, update_starting_at_step: int | None = None,
                 update_starting_at_epoch: int | None = None, **kwargs: Any) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay={decay}: pass a float in [0, 1]")
        super().__init__(device=device, use_buffers=use_buffers, avg_fn=get_ema_avg_fn(decay=decay), **kwargs)
        self.update_every_n_steps = update_every_n_steps
        self.update_starting_at_step = update_starting_at_step
        self.update_starting_at_epoch = update_starting_at_epoch

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        if step_idx is not None and (self.update_starting_at_step is None or step_idx >= self.update_starting_at_step) \
                and self.update_every_n_steps > 0 and step_idx % self.update_every_n_steps == 0:
            return True
        return epoch_idx is not None and self.update_starting_at_epoch is not None \
            and epoch_idx >= self.update_starting_at_epoch
