"""What the Trainer exposes about its run: counters, stage flags, ranks, metrics, loggers and callbacks, data
sizes. Read by LightningModules, callbacks and loggers; what changes during a run is the run state's
(run_state.py), the rest trainer.py sets."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from fabric_kit import Fabric
from fabric_kit.loggers import FolderLogger
from loops.callbacks.callback import Callback
from loops.callbacks.checkpoint import Checkpoint
from loops.callbacks.early_stopping import EarlyStopping
from loops.callbacks.progress import ProgressBar
from loops.core.optimizer_config import SchedulerConfig
from loops.trainer.run_state import RunState
from loops.trainer.states import TrainerState

if TYPE_CHECKING:
    from fabric_kit.accelerators import Accelerator
    from fabric_kit.strategies import Strategy
    from loops.core.module import LightningModule
    from loops.trainer.fit_loop import FitLoop


class TrainerProperties:
    # Set by Trainer.__init__ (trainer.py):
    fabric: Fabric
    run_state: RunState
    fit_loop: FitLoop
    callbacks: list[Callback]
    default_root_dir: str
    lightning_module: LightningModule | None
    max_steps: int
    num_sanity_val_steps: int
    accumulate_grad_batches: int
    _loggers: list[Any]

    # -- counters ----------------------------------------------------------------------------------------------------
    @property
    def current_epoch(self) -> int:
        """Epochs completed (the running epoch's index during training)."""
        return self.run_state.progress.current_epoch

    @property
    def global_step(self) -> int:
        """Optimizer steps taken (with gradient accumulation, fewer than batches)."""
        return self.run_state.progress.global_step

    @property
    def should_stop(self) -> bool:
        """Set True to stop training after the current batch (callbacks do)."""
        return self.run_state.should_stop

    @should_stop.setter
    def should_stop(self, value: bool) -> None:
        self.run_state.should_stop = value

    @property
    def max_epochs(self) -> int | None:
        """None until fit starts without one given, then Lightning's default (`FitLoop.decide_max_epochs`)."""
        return self.fit_loop.max_epochs

    @max_epochs.setter
    def max_epochs(self, value: int | None) -> None:
        self.fit_loop.max_epochs = value

    @property
    def state(self) -> TrainerState:
        return self.run_state.state

    @property
    def ckpt_path(self) -> str | None:
        """The checkpoint the last fit / validate / test / predict loaded (the file "best" / "last" named); None
        when it loaded none."""
        return self.run_state.ckpt_path

    @property
    def accelerator(self) -> Accelerator:
        """fabric's resolved accelerator instance (e.g. a `fabric_kit.accelerators.CPUAccelerator`)."""
        return self.fabric.accelerator

    @property
    def strategy(self) -> Strategy:
        """fabric's strategy instance (e.g. a `fabric_kit.strategies.DDPStrategy`): its collectives (`barrier`,
        `broadcast`, `all_gather`, `all_reduce`, `reduce_boolean_decision`) and ranks."""
        return self.fabric.strategy

    @property
    def model(self) -> LightningModule | None:
        """The module being run (Lightning gives its strategy-wrapped form, e.g. DDP's, where there is one)."""
        return self.lightning_module

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [opt.optimizer for opt in self.run_state.optimizers]

    @property
    def lr_scheduler_configs(self) -> list[SchedulerConfig]:
        return self.run_state.lr_scheduler_configs

    @property
    def loggers(self) -> list[Any]:
        return self._loggers

    @loggers.setter
    def loggers(self, loggers: list[Any] | None) -> None:
        self._loggers = list(loggers or [])

    @property
    def logger(self) -> Any:
        return self._loggers[0] if self._loggers else None

    @logger.setter
    def logger(self, logger: Any) -> None:
        self._loggers = [] if logger is None else [logger]

    @property
    def log_dir(self) -> str:
        """The first logger's version folder for TensorBoard / CSV loggers, its `save_dir` for others, else
        `default_root_dir` (Lightning's rule; checkpoints go to `<log_dir>/checkpoints`)."""
        logger = self.logger
        if isinstance(logger, FolderLogger):
            return logger.log_dir
        return str(getattr(logger, "save_dir", None) or self.default_root_dir)

    @property
    def checkpoint_callbacks(self) -> list[Checkpoint]:
        return [c for c in self.callbacks if isinstance(c, Checkpoint)]

    @property
    def checkpoint_callback(self) -> Checkpoint | None:
        callbacks = self.checkpoint_callbacks
        return callbacks[0] if callbacks else None

    @property
    def early_stopping_callbacks(self) -> list[EarlyStopping]:
        return [c for c in self.callbacks if isinstance(c, EarlyStopping)]

    @property
    def early_stopping_callback(self) -> EarlyStopping | None:
        callbacks = self.early_stopping_callbacks
        return callbacks[0] if callbacks else None

    @property
    def progress_bar_callback(self) -> ProgressBar | None:
        """The run's progress bar (None with `enable_progress_bar=False`)."""
        return next((c for c in self.callbacks if isinstance(c, ProgressBar)), None)

    @property
    def callback_metrics(self) -> dict[str, Tensor]:
        return self.run_state.metrics.callback_metrics

    @property
    def logged_metrics(self) -> dict[str, Tensor]:
        return self.run_state.metrics.logged_metrics

    @property
    def progress_bar_metrics(self) -> dict[str, float]:
        return self.run_state.metrics.progress_bar_metrics

    @property
    def training(self) -> bool:
        return self.state.stage == "train"

    @training.setter
    def training(self, value: bool) -> None:
        self.state.set_stage("train", value)

    @property
    def validating(self) -> bool:
        return self.state.stage == "validate"

    @validating.setter
    def validating(self, value: bool) -> None:
        self.state.set_stage("validate", value)

    @property
    def testing(self) -> bool:
        return self.state.stage == "test"

    @testing.setter
    def testing(self, value: bool) -> None:
        self.state.set_stage("test", value)

    @property
    def predicting(self) -> bool:
        return self.state.stage == "predict"

    @predicting.setter
    def predicting(self, value: bool) -> None:
        self.state.set_stage("predict", value)

    @property
    def sanity_checking(self) -> bool:
        return self.state.stage == "sanity_check"

    @sanity_checking.setter
    def sanity_checking(self, value: bool) -> None:
        self.state.set_stage("sanity_check", value)

    @property
    def interrupted(self) -> bool:
        return self.state.status == "interrupted"

    @property
    def world_size(self) -> int:
        return self.fabric.world_size

    @property
    def global_rank(self) -> int:
        return self.fabric.global_rank

    @property
    def local_rank(self) -> int:
        return self.fabric.local_rank

    @property
    def node_rank(self) -> int:
        return self.fabric.node_rank

    @property
    def is_global_zero(self) -> bool:
        return self.fabric.is_global_zero

    @property
    def num_devices(self) -> int:
        return max(1, self.fabric.world_size // max(1, self.num_nodes))

    @property
    def num_nodes(self) -> int:
        return self.fabric.num_nodes

    @property
    def device_ids(self) -> list[int]:
        return [self.fabric.device.index or 0]

    @property
    def precision(self) -> str:
        return self.fabric.precision.precision

    @property
    def train_dataloader(self) -> Any:
        """The training loader(s) of the running (or last) fit as the user gave them: one loader, a list or a
        dict; None before fit found them. The same for the other stages' properties below."""
        return self.run_state.user_loaders["train"]

    @property
    def val_dataloaders(self) -> Any:
        return self.run_state.user_loaders["val"]

    @property
    def test_dataloaders(self) -> Any:
        return self.run_state.user_loaders["test"]

    @property
    def predict_dataloaders(self) -> Any:
        return self.run_state.user_loaders["predict"]

    @property
    def num_training_batches(self) -> int | float:
        return self.fit_loop.num_training_batches

    @property
    def num_val_batches(self) -> list[int | float]:
        return self.fit_loop.num_val_batches

    @property
    def num_sanity_val_batches(self) -> list[int | float]:
        steps = self.num_sanity_val_steps
        return [n if steps < 0 else min(n, steps) for n in self.fit_loop.num_val_batches]

    @property
    def estimated_stepping_batches(self) -> int | float:
        """Optimizer steps fit will take (e.g. for OneCycleLR's total_steps); loads the training data if needed."""
        epochs = self.fit_loop.epoch_limit
        if epochs == -1:
            return math.inf if self.max_steps == -1 else self.max_steps
        if self.fit_loop.train_loader is None:
            self.fit_loop.setup_train_data()
        batches = self.num_training_batches
        if batches == math.inf:
            return self.max_steps if self.max_steps != -1 else math.inf
        steps = math.ceil(batches / self.accumulate_grad_batches) * max(epochs, 1)
        return min(steps, self.max_steps) if self.max_steps != -1 else steps
