"""The run state: what changes while `fit`, `validate`, `test` or `predict` runs, in one typed object that the
Trainer holds and its loops, optimization and checkpointing share. The Trainer's arguments are not part of it.

- `Progress`, the counters. Only its methods advance them: how a counter advances is read (and changed) here.
- `TrainerState` (states.py, with Lightning's enums), the stage flags: which stage function runs, which loop is
  active, how the run ended.
- `LogScope`, where `self.log` writes now: the results, the `on_step` / `on_epoch` defaults, the batch and the
  dataloader index, and the hook that is running (recorded by the hook dispatcher, `loops/trainer/hooks.py`).
  `RunState.logging_scope(...)` opens one for a block of code and puts the outer one back after it.
- `RunState`: the above, the published metrics, the optimizer handles and schedulers and the stage's wiring (the
  set-up module, the hook table), with `snapshot()` / `restore()`, with which the tuners undo a trial run."""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from loops.logging.metrics import MetricsHub
from loops.logging.results import Results
from loops.trainer.loop_state import LoopPosition
from loops.trainer.states import TrainerState

if TYPE_CHECKING:
    from torch.optim import Optimizer

    from fabric_kit.wrappers import FabricModule
    from loops.core.optimizer_config import SchedulerConfig
    from loops.trainer.hooks import HookTable
    from loops.trainer.optimization import LoopOptimizer

STAGES = ("train", "val", "test", "predict")
"""The sources of dataloaders, by the name of the stage that reads them."""


@dataclass
class Progress:
    """How far the run has come. Read anywhere; advanced only by the methods below (the fit loop and the
    optimizer handles call them)."""

    current_epoch: int = 0  # epochs completed: the running epoch's index
    global_step: int = 0  # optimizer steps taken
    batch_idx: int = 0  # batches of the current epoch whose training step ran
    total_batch_idx: int = 0  # the same over all epochs
    batches_stepped: int = 0  # batches counted as ending with an optimizer step: the loggers' step
    step_uncounted: bool = False  # the running batch stepped and `batches_stepped` does not count it yet
    epoch_done: bool = False  # the epoch's batches are over: a checkpoint saved now resumes at the next epoch
    resume_skip: int = 0  # batches of the current epoch that a resumed run has already trained on
    resume_uncounted: bool | None = False  # the last of them is not counted (None: only if validation ran after it)

    def optimizer_stepped(self) -> None:
        """An optimizer step ran (or a skipped one counts, as Lightning counts it)."""
        self.global_step += 1

    def start_epoch(self) -> None:
        self.epoch_done = False

    def start_batches(self, first: int) -> None:
        """The epoch's batches start at batch `first` (not 0 when resuming inside the epoch)."""
        self.batch_idx, self.step_uncounted = first, False

    def batch_trained(self, batch_idx: int, stepped: bool) -> None:
        """Batch `batch_idx`'s training step ran (complete: a checkpoint saved from now on resumes after it);
        `stepped`: it ended with an optimizer step, which `count_step` counts once the batch is over."""
        self.batch_idx = batch_idx + 1
        self.total_batch_idx += 1
        self.step_uncounted = stepped

    def count_step(self) -> None:
        """The batch that stepped is over: the loggers' step advances."""
        self.batches_stepped += 1
        self.step_uncounted = False

    def finish_epoch(self) -> None:
        """The epoch's batches are over (also when its pass was cut short)."""
        self.epoch_done = True

    def next_epoch(self) -> None:
        self.current_epoch += 1
        self.epoch_done = False
        self.batch_idx = 0

    def take_resume_skip(self) -> tuple[int, bool | None]:
        """The batches a resumed epoch skips and whether the last one's step is uncounted, once: the next
        epoch starts at its beginning."""
        skip, uncounted = self.resume_skip, self.resume_uncounted
        self.resume_skip, self.resume_uncounted = 0, False
        return skip, uncounted

    def position(self, automatic: bool, last_batch: bool) -> LoopPosition:
        """Where fit stands, for a checkpoint (`loop_state.encode`)."""
        return LoopPosition(epoch=self.current_epoch, epoch_done=self.epoch_done, batches=self.batch_idx,
                            total_batches=self.total_batch_idx, batches_stepped=self.batches_stepped,
                            uncounted=self.step_uncounted, global_step=self.global_step, automatic=automatic,
                            last_batch=last_batch)

    def resume(self, position: LoopPosition) -> None:
        """Continue from a checkpoint's `position`."""
        self.total_batch_idx, self.batches_stepped = position.total_batches, position.batches_stepped
        self.global_step, self.current_epoch = position.global_step, position.epoch
        if position.epoch_done:
            # Saved at the epoch's end (on_train_epoch_end, end-of-epoch validation), its schedulers already
            # stepped: the next epoch starts. (A ReduceLROnPlateau due after on_train_epoch_end is not stepped.)
            self.current_epoch += 1
        else:
            self.resume_skip, self.resume_uncounted = position.batches, position.uncounted

    def restart_loop(self) -> None:
        """A fresh fit loop's counters at the same epoch and optimizer step (where a tuner's trial starts)."""
        vars(self).update(vars(Progress(current_epoch=self.current_epoch, global_step=self.global_step)))


@dataclass
class LogScope:
    """Where `self.log` writes now. Outside every scope `results` is None and logging is refused."""

    results: Results | None = None
    on_step: bool = False  # `self.log`'s default on_step / on_epoch: per step in the training batches,
    on_epoch: bool = True  # per epoch everywhere else (Lightning's defaults)
    batch: Any = None  # the running batch, whose size weighs epoch means (None outside a batch: weight 1)
    dataloader_idx: int | None = None  # with several loaders, the running one (suffixes the logged names)
    hook: str | None = None  # the hook running now (None: a step or a batch hook, which may all log)
    pulling_step: str | None = None  # a step running that fetches its own batches: `self.log` needs `batch_size`


@dataclass
class RunState:
    """Everything a run changes; one per Trainer."""

    state: TrainerState = field(default_factory=TrainerState)
    progress: Progress = field(default_factory=Progress)
    scope: LogScope = field(default_factory=LogScope)
    should_stop: bool = False
    metrics: MetricsHub = field(default_factory=MetricsHub)
    train_results: Results | None = None  # the running training epoch's, reduced when the epoch ends
    optimizers: list[LoopOptimizer] = field(default_factory=list)
    lr_scheduler_configs: list[SchedulerConfig] = field(default_factory=list)
    # The stage's wiring, set as it starts (trainer.py):
    dataloaders: dict[str, Any] = field(default_factory=lambda: dict.fromkeys(STAGES))  # given to the stage call
    # What each source's stage found (one loader, a list or a dict, as the user's hook or call gave it), and, for
    # validate / test / predict, the list of them fabric set up (fit's are the fit loop's):
    user_loaders: dict[str, Any] = field(default_factory=lambda: dict.fromkeys(STAGES))
    set_up_loaders: dict[str, list[Any]] = field(default_factory=lambda: {stage: [] for stage in STAGES})
    # Evaluation batches run per loader in this stage call (the loggers' step for evaluation's per-step values):
    eval_batches_seen: dict[int, int] = field(default_factory=dict)
    ckpt_path: str | None = None  # the checkpoint the last stage call loaded (`trainer.ckpt_path`)
    weights_only: bool | None = None  # the stage call's: how its checkpoint is read (None: safely)
    return_predictions: bool = True
    automatic: bool = True  # the module's automatic_optimization
    recompile: Callable[[Any], Any] | None = None  # the given module was compiled: compile its router alike
    clip_hook: Callable[[Optimizer, float | None, str], None] | None = None  # clipping in automatic optimization
    custom_transfer: bool = False  # the module or datamodule overrides a batch-transfer hook
    hooks: HookTable = field(init=False, repr=False)
    fabric_module: FabricModule = field(init=False, repr=False)  # the step router as fabric set it up

    @contextmanager
    def logging_scope(self, results: Results | None, *, per_step: bool) -> Iterator[LogScope]:
        """`self.log` writes into `results` inside the block, by default per step (`per_step`, the training
        batches) or per epoch; the outer scope is back after it, also when the block raises."""
        outer = self.scope
        self.scope = scope = LogScope(results, on_step=per_step, on_epoch=not per_step)
        try:
            yield scope
        finally:
            self.scope = outer

    def snapshot(self) -> RunState:
        """A copy to `restore` later: the counters, stage flags and lists copied, everything else shared (a trial
        replaces those objects rather than changing them)."""
        saved = copy.copy(self)
        saved.state, saved.progress = copy.copy(self.state), copy.copy(self.progress)
        saved.optimizers, saved.lr_scheduler_configs = list(self.optimizers), list(self.lr_scheduler_configs)
        return saved

    def restore(self, saved: RunState) -> None:
        """Put a `snapshot()` back, in place: whoever holds this object (or its counters) sees the restored state;
        `saved` stays intact, so it can be restored again."""
        fresh = saved.snapshot()
        vars(self.state).update(vars(fresh.state))
        vars(self.progress).update(vars(fresh.progress))
        vars(self).update({name: value for name, value in vars(fresh).items() if name not in ("state", "progress")})
