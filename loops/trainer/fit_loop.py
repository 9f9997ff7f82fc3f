"""Epochs of training batches with validation at `val_check_interval`, stopping at max_epochs / max_steps /
max_time / `should_stop` (but not before min_epochs / min_steps). The per-batch path uses hook lists and bound
methods taken once per epoch, so hooks nobody overrides cost nothing."""
from __future__ import annotations

import math
import time
from typing import Any

from fabric_kit import is_wrapped
from loops.core.optimizer_config import step_schedulers
from loops.logging.results import Results
from loops.trainer.data import CycleLoaders, as_list, find_loaders, limit_batches, sequential, setup_loaders
from loops.trainer.evaluation_loop import run_evaluation
from loops.trainer.loop_state import LoopPosition, decode, encode
from loops.trainer.optimization import AutomaticStep


class FitLoop:
    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.train_loader: Any = None
        self.num_training_batches: int | float = math.inf
        self.val_check_batch: int | float = math.inf
        self.val_loaders: list[Any] = []
        self.num_val_batches: list[int | float] = []
        self.batch_idx = 0  # batches completed in the current epoch
        self.epoch_done = False
        self.total_batch_idx = 0  # batches completed over all epochs
        self.batches_stepped = 0  # batches that ended with an optimizer step (the loggers' step)
        self.step_uncounted = False  # the running batch stepped, batches_stepped does not count it yet
        self.resume_skip = 0  # batches of the current epoch a resumed run has already trained on
        self.resume_uncounted: bool | None = False  # the last of them is not counted (None: if validated after it)
        self.loader_state: dict[str, Any] | None = None  # the saved position of the training loader
        self._first_results: Any = None  # what on_train_start logged, handed to the first epoch
        self._loader_resumed = False
        self._loaded_epoch = -1
        self._val_loaded_epoch = -1
        self._start_time = 0.0

    # -- data -----------------------------------------------------------------------------------------------------
    def setup_train_data(self) -> None:
        trainer = self.trainer
        epoch = trainer.current_epoch
        every = trainer.reload_dataloaders_every_n_epochs
        if self.train_loader is not None and not (every and epoch != self._loaded_epoch and epoch % every == 0):
            return
        self._loaded_epoch = epoch
        raw = find_loaders("train", trainer._loader_args["train"], trainer.datamodule, trainer.lightning_module)
        if raw is None:
            raise ValueError(f"{type(trainer.lightning_module).__name__} has no training data: pass "
                             "train_dataloaders to fit(), a datamodule with train_dataloader(), or define "
                             "train_dataloader() on the module")
        several = isinstance(raw, (list, tuple, dict))
        raws = as_list(raw)
        if trainer.overfit_batches > 0:
            raws = [sequential(loader) for loader in raws]
        limit = trainer.overfit_batches if trainer.overfit_batches > 0 else trainer.limit_train_batches
        loaders = setup_loaders(trainer.fabric, raws, True, trainer.use_distributed_sampler,
                                not trainer._custom_transfer)
        if several:
            loaders = CycleLoaders(dict(zip(raw, loaders)) if isinstance(raw, dict) else loaders)
        self.train_loader = loaders if several else loaders[0]
        # Counted on this process's shard: with several processes each sees a part of the epoch.
        self.num_training_batches = limit_batches(self.train_loader, limit, "limit_train_batches")
        if self.loader_state is not None:
            self._loader_resumed = self._resume_loader(self.loader_state)
            self.loader_state = None
        elif epoch > 0 and is_wrapped(self.train_loader):
            # A loader (re)created later in the run shuffles as that epoch would have, not as epoch 0 again.
            self.train_loader.set_epoch(epoch)
        self.val_check_batch = self._val_check_batch()

    def _resume_loader(self, state: dict[str, Any]) -> bool:
        """Put the loader at a saved or computed position (its shuffle, its next batch); False when it cannot
        skip into an epoch, and the loop skips the trained batches by fetching them instead."""
        try:
            self.train_loader.load_state_dict(state)
        except (AttributeError, ValueError):
            return False
        return True

    def _val_check_batch(self) -> int | float:
        trainer, batches = self.trainer, self.num_training_batches
        interval = trainer.val_check_interval
        if isinstance(interval, int) and not isinstance(interval, bool):
            if trainer.check_val_every_n_epoch is not None and batches != math.inf and interval > batches:
                raise ValueError(f"val_check_interval={interval} is more than the {batches} training batches of an "
                                 "epoch; to validate every N batches across epochs pass check_val_every_n_epoch="
                                 "None, or disable validation with limit_val_batches=0")
            return interval
        if batches == math.inf:
            return math.inf
        return max(1, int(batches * interval))

    def setup_val_data(self) -> None:
        trainer = self.trainer
        epoch, every = trainer.current_epoch, trainer.reload_dataloaders_every_n_epochs
        if self._val_loaded_epoch >= 0 and not (every and epoch != self._val_loaded_epoch and epoch % every == 0):
            return
        self._val_loaded_epoch = epoch
        raw = as_list(find_loaders("val", trainer._loader_args["val"], trainer.datamodule,
                                   trainer.lightning_module))
        limit = trainer.overfit_batches if trainer.overfit_batches > 0 else trainer.limit_val_batches
        self.val_loaders = setup_loaders(trainer.fabric, raw, False, trainer.use_distributed_sampler,
                                         not trainer._custom_transfer)
        self.num_val_batches = [limit_batches(loader, limit, "limit_val_batches") for loader in self.val_loaders]

    # -- the loop -------------------------------------------------------------------------------------------------
    def run(self) -> None:
        trainer = self.trainer
        hooks = trainer._hooks
        self._start_time = time.monotonic()
        self._sanity_check()
        self.setup_train_data()
        # on_train_start may log (epoch-level, as in Lightning): its values join the first epoch's results.
        trainer._results = self._first_results = Results(trainer.fabric)
        trainer._log_defaults, trainer._batch = (False, True), None
        hooks.call("on_train_start")
        trainer._results = None
        while not self._done():
            self.setup_train_data()
            self._run_epoch()
            self._end_epoch()
        hooks.call("on_train_end")

    def _sanity_check(self) -> None:
        trainer = self.trainer
        steps = trainer.num_sanity_val_steps
        if steps == 0 or not self._validation_possible():
            return
        trainer.sanity_checking = True
        trainer._hooks.call_callbacks("on_sanity_check_start")
        self.setup_val_data()
        limits = [n if steps < 0 else min(n, steps) for n in self.num_val_batches]
        run_evaluation(trainer, "validate", self.val_loaders, limits, sanity=True)
        trainer._hooks.call_callbacks("on_sanity_check_end")
        trainer.sanity_checking = False
        trainer._metrics.reset()

    def _validation_possible(self) -> bool:
        """Without loading data: is there a validation_step and a non-zero limit?"""
        trainer = self.trainer
        limit = trainer.overfit_batches if trainer.overfit_batches > 0 else trainer.limit_val_batches
        return limit != 0 and trainer._hooks_defined("validation_step")

    def _validation_enabled(self) -> bool:
        if not self._validation_possible():
            return False
        self.setup_val_data()
        return any(n > 0 for n in self.num_val_batches)

    def _done(self) -> bool:
        trainer = self.trainer
        if trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps:
            return True
        if trainer.max_epochs is not None and trainer.max_epochs != -1 and trainer.current_epoch >= trainer.max_epochs:
            return True
        if self._time_is_up():
            return True
        return trainer.should_stop and self._can_stop()

    def _can_stop(self) -> bool:
        trainer = self.trainer
        return trainer.current_epoch >= (trainer.min_epochs or 0) and trainer.global_step >= (trainer.min_steps or 0)

    def _time_is_up(self) -> bool:
        max_time = self.trainer._max_seconds
        return max_time is not None and time.monotonic() - self._start_time >= max_time

    def _run_epoch(self) -> None:
        trainer = self.trainer
        hooks, module = trainer._hooks, trainer.lightning_module
        results = trainer._train_results = self._first_results or Results(trainer.fabric)
        self._first_results = None
        trainer._results, trainer._log_defaults = results, (False, True)
        self.epoch_done = False
        trainer._batch = None  # values logged outside a batch weigh the same on every process
        hooks.call("on_train_epoch_start")
        trainer._log_defaults = (True, False)
        start_cbs, start_mod = hooks.cb("on_train_batch_start"), hooks.mod("on_train_batch_start")
        end_cbs, end_mod = hooks.cb("on_train_batch_end"), hooks.mod("on_train_batch_end")
        automatic = trainer._automatic
        step = AutomaticStep(trainer).run if automatic else None
        fabric_module, metrics, loggers = trainer._fabric_module, trainer._metrics, trainer.loggers
        accumulate, limit = trainer.accumulate_grad_batches, self.num_training_batches
        log_every = trainer.log_every_n_steps
        # Lightning's order: schedulers step right after the optimizer step (per-epoch ones after the epoch's last
        # batch), before on_train_batch_end; ReduceLROnPlateau ones after the validation check, so they can watch
        # a validation metric. With manual optimization the step calls them itself (as in Lightning).
        step_configs = [c for c in trainer.lr_scheduler_configs if c.interval == "step"] if automatic else []
        schedulers = [c for c in step_configs if not c.reduce_on_plateau]
        plateaus = [c for c in step_configs if c.reduce_on_plateau]
        scheduler_step = module.lr_scheduler_step
        custom_transfer = trainer._custom_transfer
        start, self.resume_skip = self.resume_skip, 0
        skip, first = (0, start) if self._loader_resumed else (start, 0)
        self._loader_resumed = False
        validation = self._validation_enabled()
        if start and self._count_on_resume(start, validation):
            self.batches_stepped += 1
        self.batch_idx, self.step_uncounted = start, False
        for batch_idx, batch in enumerate(self.train_loader, first):
            if batch_idx < skip:
                continue
            if custom_transfer:
                batch = trainer._transfer(batch, 0)
            trainer._batch = batch
            stop_epoch = False
            for hook in start_cbs:
                hook(trainer, module, batch, batch_idx)
            for hook in start_mod:
                stop_epoch = hook(batch, batch_idx) == -1
            if stop_epoch:
                break
            last = batch_idx + 1 >= limit
            steps = (batch_idx + 1) % accumulate == 0 or last
            steps_before = trainer._global_step
            if automatic:
                outputs = step(batch, batch_idx, steps)
            else:
                outputs = fabric_module("training_step", batch, batch_idx)
            self.batch_idx = batch_idx + 1  # complete: a checkpoint saved in on_train_batch_end resumes after it
            self.total_batch_idx += 1
            stepped = trainer._global_step != steps_before if not automatic else steps
            self.step_uncounted = stepped  # until counted below: a checkpoint saved meanwhile says so
            if schedulers and stepped:  # `frequency` counts batches that stepped (optimizers may be several)
                step_schedulers(schedulers, "step", self.batches_stepped + 1, trainer.callback_metrics,
                                scheduler_step)
            if last:
                self._step_epoch_schedulers(trainer.callback_metrics, plateau=False)
            if results.step_logged and (end_cbs or end_mod):  # they read this step's values (e.g. a monitor)
                metrics.callback_metrics.update(results.step_metrics(consume=False)[0])
            for hook in end_cbs:
                hook(trainer, module, outputs, batch, batch_idx)
            for hook in end_mod:
                hook(outputs, batch, batch_idx)
            if results.step_logged:
                metrics.step_end(results, loggers, (self.batches_stepped + 1) % log_every == 0 or trainer.should_stop,
                                 self.batches_stepped, trainer.current_epoch)
            if last:
                self._finish_epoch()
            if validation and self._should_validate(batch_idx, last):
                self.run_validation()
                trainer._results, trainer._log_defaults = results, (True, False)
            if plateaus and stepped:
                step_schedulers(plateaus, "step", self.batches_stepped + 1, trainer.callback_metrics,
                                scheduler_step)
            if stepped:
                self.batches_stepped += 1
                self.step_uncounted = False
            if last or (trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps) \
                    or (trainer.should_stop and self._can_stop()) or (self._time_is_up()):
                break
        else:
            # A loader without a length ran out: its last batch was only known now.
            if limit == math.inf:
                self._step_epoch_schedulers(trainer.callback_metrics, plateau=False)
                if validation and self._should_validate(self.batch_idx - 1, True):
                    self.run_validation()
        self._finish_epoch()

    def _finish_epoch(self) -> None:
        """The epoch is over even when its pass was cut short: a checkpoint saved from now on resumes at the next
        epoch, and the loader's saved position says so too."""
        self.epoch_done = True
        if is_wrapped(self.train_loader):
            self.train_loader.set_epoch(self.trainer.current_epoch + 1)

    def _should_validate(self, batch_idx: int, last: bool) -> bool:
        trainer = self.trainer
        every = trainer.check_val_every_n_epoch
        if every is not None and (trainer.current_epoch + 1) % every:
            return False
        if trainer.should_stop and self._can_stop():
            return True
        check = self.val_check_batch
        if check == math.inf:
            return last
        if every is None:
            return self.total_batch_idx % check == 0
        return (batch_idx + 1) % check == 0

    def run_validation(self) -> None:
        trainer = self.trainer
        trainer.validating, trainer.training = True, False
        run_evaluation(trainer, "validate", self.val_loaders, self.num_val_batches)
        trainer.validating, trainer.training = False, True

    def _end_epoch(self) -> None:
        trainer = self.trainer
        trainer._batch = None  # not the last batch's size: it differs between processes
        hooks = trainer._hooks
        trainer._results, trainer._log_defaults = trainer._train_results, (False, True)
        hooks.call_callbacks("on_train_epoch_end", monitoring=False)
        for hook in hooks.mod("on_train_epoch_end"):
            hook()
        # Logged at the step of the epoch's last batch, as Lightning does.
        trainer._metrics.epoch_end(trainer._train_results, trainer.loggers, max(0, self.batches_stepped - 1),
                                   trainer.current_epoch)
        trainer._train_results.reset_metrics()
        hooks.call_callbacks("on_train_epoch_end", monitoring=True)
        trainer._results = None
        self._step_epoch_schedulers(trainer.callback_metrics, plateau=True)
        trainer.current_epoch += 1
        self.epoch_done = False
        self.batch_idx = 0

    def _step_epoch_schedulers(self, metrics: Any, plateau: bool) -> None:
        """The per-epoch schedulers: ReduceLROnPlateau ones (`plateau`, after on_train_epoch_end) or the others
        (after the epoch's last batch; an epoch cut short by max_steps or should_stop does not step them)."""
        configs = [c for c in self.trainer.lr_scheduler_configs if c.interval == "epoch" and
                   c.reduce_on_plateau == plateau]
        if configs and self.trainer._automatic:
            step_schedulers(configs, "epoch", self.trainer.current_epoch + 1, metrics,
                            self.trainer.lightning_module.lr_scheduler_step)

    # -- checkpoints ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The loop's position in Lightning's layout (`loop_state`), from which either Trainer resumes."""
        trainer = self.trainer
        return encode(LoopPosition(epoch=trainer.current_epoch, epoch_done=self.epoch_done, batches=self.batch_idx,
                                   total_batches=self.total_batch_idx, batches_stepped=self.batches_stepped,
                                   uncounted=self.step_uncounted, global_step=trainer.global_step,
                                   automatic=trainer.lightning_module.automatic_optimization,
                                   last_batch=self.batch_idx >= self.num_training_batches))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        trainer = self.trainer
        position = decode(state)
        self.total_batch_idx = position.total_batches
        self.batches_stepped = position.batches_stepped
        trainer._global_step = position.global_step
        trainer.current_epoch = position.epoch
        if position.epoch_done:
            # Saved at the epoch's end (on_train_epoch_end, end-of-epoch validation), its schedulers already
            # stepped: the next epoch starts. (A ReduceLROnPlateau due after on_train_epoch_end is not stepped.)
            trainer.current_epoch += 1
        else:
            self.resume_skip, self.resume_uncounted = position.batches, position.uncounted

    def _count_on_resume(self, batches: int, validation: bool) -> bool:
        """Whether resuming after `batches` of the epoch must count the last one's optimizer step in
        `batches_stepped`: saved before it was counted (from its on_train_batch_end, or by Lightning in the
        validation after it, which its counters do not tell apart from a save after the count)."""
        uncounted, self.resume_uncounted = self.resume_uncounted, False
        limit = self.num_training_batches
        stepped = batches % self.trainer.accumulate_grad_batches == 0 or batches >= limit
        if uncounted is None:
            return stepped and validation and self._should_validate(batches - 1, batches >= limit)
        return stepped and uncounted
