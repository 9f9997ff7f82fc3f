"""Epochs of training batches with validation at `val_check_interval`, stopping at max_epochs / max_steps /
`should_stop` (set by callbacks, e.g. the Timer that max_time adds; not before min_epochs / min_steps), or at the
step boundary where a preemption signal is agreed (`FitLoop.preempt`). What the per-batch path needs (hook lists,
the step, the schedulers) is taken once per epoch (`_TrainingEpoch`), so hooks nobody overrides cost nothing. The
counters it advances are the run state's `Progress` (run_state.py)."""
from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from itertools import islice, repeat
from typing import TYPE_CHECKING, Any

from fabric_kit import is_wrapped
from fabric_kit.utilities.seed import isolate_rng
from loops.core.optimizer_config import step_schedulers
from loops.logging.results import Results
from loops.trainer.checkpointing import restore_model, restore_training_state
from loops.trainer.data import DataloaderIter, batches, eval_loaders, find_loaders, limit_combined, train_loader
from loops.trainer.evaluation_loop import run_evaluation
from loops.trainer.loop_state import decode, encode
from loops.trainer.optimization import AutomaticStep
from loops.trainer.router import pulls_batches
from loops.trainer.states import TrainerStatus

if TYPE_CHECKING:
    from fabric_kit.accumulation import MicroBatch
    from loops.trainer.run_state import LogScope
    from loops.trainer.trainer import Trainer


class FitLoop:
    """The training loop of `fit`, and the training and validation data it runs on."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.max_epochs: int | None = None  # `trainer.max_epochs`; assignable, e.g. to extend a resumed run
        self.train_loader: Any = None
        self.num_training_batches: int | float = math.inf
        self.val_check_batch: int | float = math.inf
        self.val_loaders: list[Any] = []
        self.num_val_batches: list[int | float] = []
        self.loader_state: dict[str, Any] | None = None  # the saved position of the training loader
        self._loader_resumed = False
        self._loaded_epoch = -1
        self._val_loaded_epoch = -1
        self._last_validation = 0.0  # when validation inside fit last ended (time.monotonic())
        self.preempted = False  # the run stopped at a step boundary after a preemption signal (`preempt`)
        self.rolled_back = False  # `roll_back` restored a checkpoint: the running pass ends after its batch

    @property
    def epoch_limit(self) -> int:
        """max_epochs as fit runs it (-1: none). Lightning's rule when none was given: 1000 epochs unless
        max_steps or max_time bounds the run, then none."""
        if self.max_epochs is not None:
            return self.max_epochs
        trainer = self.trainer
        return 1000 if trainer.max_steps == -1 and trainer._max_seconds is None else -1

    def decide_max_epochs(self) -> None:
        """As fit starts, `trainer.max_epochs` becomes the `epoch_limit`."""
        self.max_epochs = self.epoch_limit

    # -- data -----------------------------------------------------------------------------------------------------
    def setup_train_data(self) -> None:
        trainer, state = self.trainer, self.trainer.run_state
        epoch = trainer.current_epoch
        every = trainer.reload_dataloaders_every_n_epochs
        if self.train_loader is not None and not (every and epoch != self._loaded_epoch and epoch % every == 0):
            return
        self._loaded_epoch = epoch
        raw = state.user_loaders["train"] = find_loaders("train", state.dataloaders["train"], state.hooks)
        if raw is None:
            raise ValueError(f"{type(trainer.lightning_module).__name__} has no training data: pass "
                             "train_dataloaders to fit(), a datamodule with train_dataloader(), or define "
                             "train_dataloader() on the module")
        limit = trainer.overfit_batches if trainer.overfit_batches > 0 else trainer.limit_train_batches
        self.train_loader = train_loader(trainer.fabric, raw, trainer.overfit_batches > 0,
                                         trainer.use_distributed_sampler, not state.custom_transfer)
        # Counted on this process's shard: with several processes each sees a part of the epoch.
        self.num_training_batches = limit_combined(self.train_loader, limit, "limit_train_batches")
        if self.loader_state is not None:
            self._loader_resumed = self._resume_loader(self.loader_state)
            self.loader_state = None
        elif epoch > 0 and is_wrapped(self.train_loader):
            # A loader (re)created later in the run shuffles as that epoch would have, not as epoch 0 again.
            self.train_loader.set_epoch(epoch)
        self.val_check_batch = self._val_check_batch()

    def reload_data(self) -> None:
        """Build the training and validation loaders again when the loop next starts (e.g. at a new batch size)."""
        self.train_loader = None
        self._val_loaded_epoch = -1

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
        if not isinstance(interval, (int, float)):  # a time: `_should_validate` looks at the clock
            return math.inf
        if isinstance(interval, int) and not isinstance(interval, bool):
            if trainer.check_val_every_n_epoch is not None and batches != math.inf and interval > batches \
                    and trainer.limit_val_batches != 0:  # validation off: the interval never applies
                raise ValueError(f"val_check_interval={interval} is more than the {batches} training batches of an "
                                 "epoch; to validate every N batches across epochs pass check_val_every_n_epoch="
                                 "None, or disable validation with limit_val_batches=0")
            return interval
        if batches == math.inf:
            return math.inf
        return max(1, int(batches * interval))

    def setup_val_data(self) -> None:
        trainer, state = self.trainer, self.trainer.run_state
        epoch, every = trainer.current_epoch, trainer.reload_dataloaders_every_n_epochs
        if self._val_loaded_epoch >= 0 and not (every and epoch - self._val_loaded_epoch >= every):
            return  # Lightning's rule: reloaded once `every` epochs passed since it was loaded
        self._val_loaded_epoch = epoch
        found = state.user_loaders["val"] = find_loaders("val", state.dataloaders["val"], state.hooks)
        limit = trainer.overfit_batches if trainer.overfit_batches > 0 else trainer.limit_val_batches
        self.val_loaders, self.num_val_batches = eval_loaders(trainer.fabric, found, "val", limit, "limit_val_batches",
                                                              trainer.use_distributed_sampler,
                                                              not state.custom_transfer)

    # -- the loop -------------------------------------------------------------------------------------------------
    def run(self) -> None:
        state = self.trainer.run_state
        self.preempted = False
        self._sanity_check()
        if self.trainer.limit_train_batches == 0:  # Lightning's rule: no training at all, not even its hooks
            return
        self.setup_train_data()
        self._last_validation = time.monotonic()  # a time-based val_check_interval counts from here
        # on_train_start may log (epoch-level, as in Lightning): its values join the first epoch's results.
        state.train_results = Results(self.trainer.fabric)
        with state.logging_scope(state.train_results, per_step=False):
            state.hooks.call("on_train_start")
        while not self._done():
            self.setup_train_data()
            with self.trainer.profiler.profile("run_training_epoch"):
                self._run_epoch(state.train_results)
            if self.preempted:
                return
            if self.rolled_back:  # continue from the restored position, without the abandoned steps' values
                self.rolled_back = False
                state.train_results = Results(self.trainer.fabric)
                continue
            self._end_epoch(state.train_results)
            # An epoch's last step boundary is here, after its end, which a resumed run does not repeat.
            if self.trainer.fabric.preempted:
                self.preempt()
                return
        state.hooks.call("on_train_end")

    def preempt(self) -> bool:
        """A preemption signal reached some rank (`fabric.preempted`, read at every step boundary on every rank
        alike): the callbacks' `on_preempt` save the state here (ModelCheckpoint: last.ckpt) and fit stops; the
        Trainer then ends the process (`Trainer._end_preempted`). Returns True: the epoch ends."""
        trainer = self.trainer
        self.preempted = True
        trainer.state.status = TrainerStatus.INTERRUPTED
        if not trainer.checkpoint_callbacks:
            warnings.warn("fit was preempted and stops without saving: no checkpoint callback is in "
                          "Trainer(callbacks=[...]) (add ModelCheckpoint to resume with ckpt_path=\"last\")",
                          stacklevel=2)
        trainer.run_state.hooks.call_callbacks("on_preempt")
        return True

    def roll_back(self, path: str) -> None:
        """Go back to the checkpoint at `path`, written earlier in this fit, from a training batch's hook (e.g.
        SpikeDetection's rollback, on every rank): weights, optimizers, schedulers, callbacks' states, counters,
        RNG and the training loader's position come back, the gradients of an unfinished accumulation window are
        dropped, and the running pass over the loader ends after this batch's hooks; fit then continues from the
        checkpoint's position."""
        trainer = self.trainer
        checkpoint = restore_model(trainer, path, "fit")
        restore_training_state(trainer, checkpoint, path)
        if self.loader_state is None or not self._resume_loader(self.loader_state):
            raise ValueError(f"cannot roll back to {path!r}: it holds no position of the training loader that the "
                             "loader can resume (a loader set up with use_distributed_sampler=True over a "
                             "map-style dataset, saved by this Trainer, can)")
        self.loader_state, self._loader_resumed, self.rolled_back = None, True, True
        for optimizer in trainer.optimizers:
            optimizer.zero_grad()

    def _sanity_check(self) -> None:
        trainer, state = self.trainer, self.trainer.run_state
        steps = trainer.num_sanity_val_steps
        if steps == 0 or not self._validation_possible():
            return
        trainer.sanity_checking = True
        state.hooks.call_callbacks("on_sanity_check_start")
        self.setup_val_data()
        limits = [n if steps < 0 else min(n, steps) for n in self.num_val_batches]
        with isolate_rng(include_cuda=trainer.fabric.device.type == "cuda"):
            run_evaluation(trainer, "validate", self.val_loaders, limits, sanity=True)
        state.hooks.call_callbacks("on_sanity_check_end")
        trainer.sanity_checking = False
        state.metrics.reset()

    def _validation_possible(self) -> bool:
        """Without loading data: is there a validation_step and a non-zero limit?"""
        trainer = self.trainer
        limit = trainer.overfit_batches if trainer.overfit_batches > 0 else trainer.limit_val_batches
        return limit != 0 and bool(trainer.run_state.hooks.mod("validation_step"))

    def _epoch_validates(self) -> bool:
        """Whether `check_val_every_n_epoch` makes this epoch one that validates."""
        every = self.trainer.check_val_every_n_epoch
        return every is None or (self.trainer.current_epoch + 1) % every == 0

    def _validation_enabled(self) -> bool:
        """Whether this epoch validates; its loader is (re)loaded only then, as in Lightning."""
        if not self._validation_possible() or not self._epoch_validates():
            return False
        self.setup_val_data()
        return any(n > 0 for n in self.num_val_batches)

    def _done(self) -> bool:
        trainer, progress = self.trainer, self.trainer.run_state.progress
        if trainer.max_steps != -1 and progress.global_step >= trainer.max_steps:
            return True
        max_epochs = self.max_epochs
        if max_epochs is not None and max_epochs != -1 and progress.current_epoch >= max_epochs:
            return True
        return trainer.run_state.should_stop and self._can_stop()

    def _can_stop(self) -> bool:
        trainer, progress = self.trainer, self.trainer.run_state.progress
        return progress.current_epoch >= (trainer.min_epochs or 0) and progress.global_step >= (trainer.min_steps or 0)

    def _run_epoch(self, results: Results) -> None:
        state = self.trainer.run_state
        with state.logging_scope(results, per_step=False):  # no batch: what is logged weighs the same everywhere
            state.progress.start_epoch()
            state.hooks.call("on_train_epoch_start")
        epoch = _TrainingEpoch(self, results)  # after on_train_epoch_start, which may change accumulate_grad_batches
        skip, first = self._resume_point(epoch.validation)
        hooks = state.hooks
        with state.logging_scope(results, per_step=True) as scope:
            if epoch.pulls:
                scope.pulling_step = "training_step"
                epoch.run_pulling(scope, DataloaderIter(self.train_loader, first, skip, self.num_training_batches))
            else:
                run_batch = hooks.profiled("run_training_batch", epoch.run_batch)
                fetched = hooks.batches("[_TrainingEpochLoop].train_dataloader_next", batches(self.train_loader))
                for micro, (batch_idx, batch) in epoch.micro_batches(fetched, skip, first):
                    if run_batch(scope, batch, batch_idx, micro):
                        break
                else:
                    epoch.loader_ran_out()
        if not self.rolled_back:  # else the restored position stands
            self._finish_epoch()

    def _resume_point(self, validation: bool) -> tuple[int, int]:
        """(batches to fetch and skip, index of the loader's first batch) for this epoch: a resumed epoch starts
        after the batches its checkpoint trained on, skipped by the loader itself when it was put at its saved
        position."""
        progress = self.trainer.run_state.progress
        start, uncounted = progress.take_resume_skip()
        if start and self._count_on_resume(start, uncounted, validation):
            progress.count_step()
        progress.start_batches(start)
        skip, first = (0, start) if self._loader_resumed else (start, 0)
        self._loader_resumed = False
        return skip, first

    def _finish_epoch(self) -> None:
        """The epoch is over even when its pass was cut short: a checkpoint saved from now on resumes at the next
        epoch, and the loader's saved position says so too."""
        progress = self.trainer.run_state.progress
        progress.finish_epoch()
        if is_wrapped(self.train_loader):
            self.train_loader.set_epoch(progress.current_epoch + 1)

    def _should_validate(self, batch_idx: int, last: bool) -> bool:
        trainer, progress = self.trainer, self.trainer.run_state.progress
        if not self._epoch_validates():
            return False
        every = trainer.check_val_every_n_epoch
        if trainer.run_state.should_stop and self._can_stop():
            return True
        if trainer._val_check_seconds is not None:
            return time.monotonic() - self._last_validation >= trainer._val_check_seconds
        check = self.val_check_batch
        if check == math.inf:
            return last
        if every is None:
            return progress.total_batch_idx % check == 0
        return (batch_idx + 1) % check == 0

    def validation_follows(self, batch_idx: int) -> bool:
        """Whether validation runs right after training batch `batch_idx` of this epoch (a callback's
        `on_train_batch_end` reads it to wait for that validation's metrics instead of using the previous ones)."""
        return self._validation_possible() and any(n > 0 for n in self.num_val_batches) \
            and self._should_validate(batch_idx, batch_idx + 1 >= self.num_training_batches)

    def run_validation(self, free_gradients: bool = True) -> None:
        """Validation inside fit; unless gradients are being accumulated (`free_gradients` False), they are freed
        first (`on_validation_model_zero_grad`)."""
        trainer = self.trainer
        if free_gradients:
            hooks = trainer.run_state.hooks
            hooks.call_on(hooks.pl_module, "on_validation_model_zero_grad")
        trainer.validating, trainer.training = True, False
        run_evaluation(trainer, "validate", self.val_loaders, self.num_val_batches)
        trainer.validating, trainer.training = False, True
        self._last_validation = time.monotonic()

    def _end_epoch(self, results: Results) -> None:
        trainer, state = self.trainer, self.trainer.run_state
        hooks, progress = state.hooks, state.progress
        with state.logging_scope(results, per_step=False):  # no batch: the last one's size differs by process
            hooks.call_callbacks("on_train_epoch_end", monitoring=False)
            hooks.call_on(hooks.pl_module, "on_train_epoch_end")
            # Logged at the step of the epoch's last batch, as Lightning does.
            state.metrics.epoch_end(results, trainer.loggers, max(0, progress.batches_stepped - 1),
                                    progress.current_epoch)
            results.reset_metrics()
            hooks.call_callbacks("on_train_epoch_end", monitoring=True)
        self._step_epoch_schedulers(plateau=True)
        progress.next_epoch()
        state.train_results = Results(trainer.fabric)

    def _step_epoch_schedulers(self, plateau: bool) -> None:
        """The per-epoch schedulers: ReduceLROnPlateau ones (`plateau`, after on_train_epoch_end) or the others
        (after the epoch's last batch; an epoch cut short by max_steps or should_stop does not step them)."""
        state = self.trainer.run_state
        configs = [c for c in state.lr_scheduler_configs if c.interval == "epoch" and c.reduce_on_plateau == plateau]
        if configs and state.automatic:
            step_schedulers(configs, "epoch", state.progress.current_epoch + 1, self.trainer.callback_metrics,
                            _scheduler_stepper(self.trainer))

    # -- checkpoints ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The loop's position in Lightning's layout (`loop_state`), from which either Trainer resumes."""
        state = self.trainer.run_state
        return encode(state.progress.position(automatic=state.hooks.pl_module.automatic_optimization,
                                              last_batch=state.progress.batch_idx >= self.num_training_batches))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trainer.run_state.progress.resume(decode(state))

    def _count_on_resume(self, batches: int, uncounted: bool | None, validation: bool) -> bool:
        """Whether resuming after `batches` of the epoch must count the last one's optimizer step in
        `batches_stepped`: saved before it was counted (from its on_train_batch_end, or by Lightning in the
        validation after it, which its counters do not tell apart from a save after the count)."""
        limit = self.num_training_batches
        stepped = batches % self.trainer.accumulate_grad_batches == 0 or batches >= limit
        if uncounted is None:
            return stepped and validation and self._should_validate(batches - 1, batches >= limit)
        return stepped and uncounted


def _scheduler_stepper(trainer: Trainer) -> Callable[[Any, Any], Any]:
    """The module's `lr_scheduler_step(scheduler, metric)`, called as a hook (it may not log)."""
    hooks = trainer.run_state.hooks
    return partial(hooks.call_on, hooks.pl_module, "lr_scheduler_step")


class _TrainingEpoch:
    """One epoch's batches. Built after on_train_epoch_start, it takes once what every batch uses (the hook lists,
    the step, the schedulers due per step), so a batch costs a few attribute lookups beyond its hooks and step.

    Lightning's order within a batch: schedulers step right after the optimizer step (per-epoch ones after the
    epoch's last batch), before on_train_batch_end; ReduceLROnPlateau ones after the validation check, so they can
    watch a validation metric. With manual optimization the step calls them itself (as in Lightning)."""

    def __init__(self, loop: FitLoop, results: Results) -> None:
        trainer = loop.trainer
        state = trainer.run_state
        hooks = state.hooks
        self.loop, self.trainer, self.state, self.progress = loop, trainer, state, state.progress
        self.results = results
        self.hooks, self.module, self.fabric_module = hooks, hooks.pl_module, state.fabric_module
        self.run_step = hooks.steps(state.fabric_module)
        self.fabric = trainer.fabric
        self.start_cbs, self.start_mod = hooks.cb("on_train_batch_start"), hooks.mod("on_train_batch_start")
        self.end_cbs, self.end_mod = hooks.cb("on_train_batch_end"), hooks.mod("on_train_batch_end")
        self.step = AutomaticStep(trainer).run if state.automatic else None
        self.accumulate, self.limit = trainer.accumulate_grad_batches, loop.num_training_batches
        self.num_items = trainer.accumulate_num_items
        self.log_every = trainer.log_every_n_steps
        step_configs = [c for c in state.lr_scheduler_configs if c.interval == "step"] if state.automatic else []
        self.schedulers = [c for c in step_configs if not c.reduce_on_plateau]
        self.plateaus = [c for c in step_configs if c.reduce_on_plateau]
        self.scheduler_step = _scheduler_stepper(trainer)
        self.validation = loop._validation_enabled()
        self.pulls = pulls_batches(self.module.training_step)
        if self.pulls and (self.accumulate > 1 or self.num_items is not None):
            raise ValueError(f"training_step(self, dataloader_iter) fetches its own batches, so the Trainer cannot "
                             f"make them micro-batches: accumulate_grad_batches={self.accumulate}"
                             f"{' with accumulate_num_items' if self.num_items is not None else ''} is not "
                             "supported with it; pass accumulate_grad_batches=1 and accumulate inside the step")
        if self.pulls and trainer.on_oom == "reduce":
            raise ValueError("training_step(self, dataloader_iter) fetches its own batches, so on_oom='reduce' "
                             "cannot cut them into micro-batches; pass on_oom='raise'")

    def micro_batches(self, loader: Iterable[Any], skip: int, first: int
                      ) -> Iterator[tuple[MicroBatch | None, tuple[int, Any]]]:
        """The epoch's `(micro-batch, (batch_idx, batch))` from `loader`'s batch `first` on, after skipping
        `skip` fetched ones, up to the batch limit. With accumulation (or items to weigh) each batch is a
        micro-batch of `fabric.accumulate`, its windows aligned on `batch_idx % accumulate_grad_batches` as in
        Lightning; otherwise it is None, and nothing runs around the batch."""
        stop = None if self.limit == math.inf else max(0, int(self.limit) - first)
        batches = islice(enumerate(loader, first), skip, stop)
        if self.step is None or (self.accumulate == 1 and self.num_items is None):
            return zip(repeat(None), batches)
        num_items = self.num_items
        count = None if num_items is None else (lambda element: num_items(element[1]))
        return iter(self.fabric.accumulate(self.fabric_module, batches, self.accumulate, num_items=count,
                                           offset=max(skip, first) % self.accumulate))

    def run_batch(self, scope: LogScope, batch: Any, batch_idx: int, micro: MicroBatch | None = None,
                  pulled: DataloaderIter | None = None) -> bool:
        """Train on batch `batch_idx` (`micro`: its place in an accumulation window); True when the epoch ends
        with it. With `pulled`, the step fetches its batches from it and `batch_idx` counts the step's calls; the
        batch hooks get the batch fetched last and its index (Lightning's rule)."""
        trainer, module, progress = self.trainer, self.module, self.progress
        index = batch_idx  # the epoch's step calls before this one
        if pulled is not None:
            step_input, batch, batch_idx = pulled, pulled.batch, pulled.batch_idx
        else:
            if self.state.custom_transfer:
                batch = self.hooks.transfer(batch, 0, trainer.fabric.device)
            step_input = batch
        scope.batch = batch
        stop_epoch = False
        for hook in self.start_cbs:
            hook(trainer, module, batch, batch_idx)
        for hook in self.start_mod:
            stop_epoch = hook(batch, batch_idx) == -1
        if stop_epoch:  # the epoch ends here, as if at its last batch: its epoch-interval schedulers step
            self.loop._step_epoch_schedulers(plateau=False)
            return True
        last = index + 1 >= self.limit
        if self.step is not None:
            outputs, stepped = self.step(step_input, index, micro), micro is None or micro.is_last
        else:
            steps_before = progress.global_step
            try:
                # manual_backward runs inside the step: under DDP each backward then syncs the gradients itself
                with self.fabric.backward_inside_forward(self.fabric_module):
                    outputs = self.run_step("training_step", step_input, index)
            except StopIteration:
                if pulled is None:
                    raise
                outputs = None  # the batches ran out in the step: Lightning's manual loop still ends the batch
            stepped = progress.global_step != steps_before
        if pulled is not None:  # the step fetched: the hooks after it see its last batch
            batch, batch_idx, last = pulled.batch, pulled.batch_idx, last or pulled.done
            scope.batch = batch
        progress.batch_trained(index, stepped)
        if self._end_batch(outputs, batch, batch_idx, index, stepped, last):
            return True
        # An epoch's last batch reads `preempted` after the epoch's end (`FitLoop.run`).
        return last or (trainer.max_steps != -1 and progress.global_step >= trainer.max_steps) \
            or (self.state.should_stop and self.loop._can_stop()) \
            or (self.fabric.preempted and self.loop.preempt())

    def run_pulling(self, scope: LogScope, pulled: DataloaderIter) -> None:
        """An epoch of `training_step(self, dataloader_iter)`: the step runs until the epoch's batches are out. When
        they run out inside a step (the loader's length unknown, or the step asked for more), that call ends the
        epoch, in automatic optimization without the hooks after it, as in Lightning."""
        try:
            while not pulled.done and self.progress.batch_idx < self.limit:
                if self.run_batch(scope, None, self.progress.batch_idx, pulled=pulled):
                    return
        except StopIteration:
            pass
        if pulled.ran_out:
            self.loader_ran_out()

    def _end_batch(self, outputs: Any, batch: Any, batch_idx: int, index: int, stepped: bool, last: bool) -> bool:
        """The schedulers, on_train_batch_end (with `batch_idx`), the step's logs, validation when due (after the
        epoch's `index`-th step); then the step is counted. True when a hook rolled fit back (`FitLoop.roll_back`):
        the rest is left out, the restored state stands."""
        trainer, module, progress, state, loop = self.trainer, self.module, self.progress, self.state, self.loop
        results = self.results
        if self.schedulers and stepped:  # `frequency` counts batches that stepped (optimizers may be several)
            step_schedulers(self.schedulers, "step", progress.batches_stepped + 1, state.metrics.callback_metrics,
                            self.scheduler_step)
        if last:
            loop._step_epoch_schedulers(plateau=False)
        if results.step_logged and (self.end_cbs or self.end_mod):
            # the hooks read this step's values (e.g. a monitor)
            state.metrics.callback_metrics.update(results.step_metrics(consume=False)[0])
        for hook in self.end_cbs:
            hook(trainer, module, outputs, batch, batch_idx)
        for hook in self.end_mod:
            hook(outputs, batch, batch_idx)
        if loop.rolled_back:
            return True
        if results.step_logged:
            log_now = (progress.batches_stepped + 1) % self.log_every == 0 or state.should_stop
            state.metrics.step_end(results, trainer.loggers, log_now, progress.batches_stepped,
                                   progress.current_epoch)
        if last:
            loop._finish_epoch()
        if self.validation and loop._should_validate(index, last):
            loop.run_validation((index + 1) % self.accumulate == 0 or last)  # not amid an accumulation
        if self.plateaus and stepped:
            step_schedulers(self.plateaus, "step", progress.batches_stepped + 1, state.metrics.callback_metrics,
                            self.scheduler_step)
        if stepped:
            progress.count_step()
        return False

    def loader_ran_out(self) -> None:
        """A loader without a length ran out: its last batch was only known now."""
        if self.limit == math.inf:
            self.loop._step_epoch_schedulers(plateau=False)
            if self.validation and self.loop._should_validate(self.progress.batch_idx - 1, True):
                self.loop.run_validation()
