"""The fit loop's position in a checkpoint, as Lightning 2.x lays it out under `checkpoint["loops"]["fit_loop"]`:
progress counters (ready / started / processed / completed) of epochs, batches and optimizer steps. Both Trainers
write and read this one layout, so each resumes the other's checkpoints at the same epoch, batch and step.

How Lightning's counters tell where a checkpoint was saved (and how loops writes them):
- epochs processed > completed: in `on_train_epoch_end`, the epoch's batches over; resuming starts the next epoch.
- epochs started > processed: inside the epoch, after `batches processed` training steps; then
  - batches processed > completed: from `on_train_batch_end` (or the validation after it) of the last one, whose
    step is not yet counted in `_batches_that_stepped` (the loggers' step);
  - batches ready > processed: between batches, everything of the last one counted;
  - ready = processed = completed: Lightning's validation after the last batch, counted only if validation ran.
- otherwise: between epochs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

EPOCHS = "epoch_progress"
BATCHES = "epoch_loop.batch_progress"
LOOP_STATE = "epoch_loop.state_dict"
AUTOMATIC_STEPS = "epoch_loop.automatic_optimization.optim_progress"
MANUAL_STEPS = "epoch_loop.manual_optimization.optim_step_progress"


@dataclass(frozen=True)
class LoopPosition:
    """Where fit stands, in loops' terms."""

    epoch: int  # the epoch that runs (or starts next)
    epoch_done: bool  # its batches are over: resuming starts the next epoch
    batches: int  # batches of the epoch whose training step ran
    total_batches: int  # the same over all epochs
    batches_stepped: int  # batches counted as ending with an optimizer step (the loggers' step)
    uncounted: bool | None  # the last of `batches` stepped and is not counted yet; None: only if validation ran
    global_step: int  # optimizer steps
    automatic: bool = True  # automatic optimization (Lightning counts manual steps apart)
    last_batch: bool = False  # `batches` reached the epoch's length


def encode(position: LoopPosition) -> dict[str, Any]:
    """Lightning's `fit_loop` state for `position` (only the counters its resume reads)."""
    epoch, done, batches, total = position.epoch, position.epoch_done, position.batches, position.total_batches
    uncounted = bool(position.uncounted)
    stepped = position.batches_stepped
    if done:  # as Lightning writes it in on_train_epoch_end, with the last batch counted
        epochs = _progress(epoch + 1, epoch + 1, epoch + 1, epoch)
        stepped += uncounted
        uncounted = False
    elif batches:
        epochs = _progress(epoch + 1, epoch + 1, epoch, epoch)
    else:
        epochs = _progress(epoch, epoch, epoch, epoch)
    between = not done and batches and not uncounted  # the last batch is over: the next one is "ready"
    steps = {"total": {"ready": position.global_step, "completed": position.global_step}}
    steps["current"] = steps["total"]
    return {
        EPOCHS: epochs,
        BATCHES: {"current": _counts(batches + between, batches, batches, batches - uncounted),
                  "total": _counts(total + between, total, total, total - uncounted),
                  "is_last_batch": position.last_batch},
        LOOP_STATE: {"_batches_that_stepped": stepped},
        **({AUTOMATIC_STEPS: {"optimizer": {"step": steps, "zero_grad": {
            key: {**counts, "started": counts["ready"]} for key, counts in steps.items()}}}}
           if position.automatic else {MANUAL_STEPS: steps}),
    }


def decode(state: dict[str, Any]) -> LoopPosition:
    """The position a `fit_loop` state (written by either Trainer) holds; absent counters read as zero."""
    epochs = state.get(EPOCHS, {}).get("current", {})
    epoch, processed = epochs.get("completed", 0), epochs.get("processed", 0)
    in_epoch = epochs.get("started", 0) > processed
    progress = state.get(BATCHES, {})
    batches = progress.get("current", {})
    ran = batches.get("processed", 0) if in_epoch or processed > epoch else 0
    uncounted: bool | None = False
    if in_epoch and ran:
        if batches.get("completed", 0) < ran:
            uncounted = True
        elif batches.get("ready", 0) == ran:
            uncounted = None
    automatic = state.get(AUTOMATIC_STEPS, {}).get("optimizer", {}).get("step", {}).get("total", {})
    manual = state.get(MANUAL_STEPS, {}).get("total", {})
    return LoopPosition(epoch=epoch, epoch_done=processed > epoch, batches=ran,
                        total_batches=progress.get("total", {}).get("processed", 0),
                        batches_stepped=state.get(LOOP_STATE, {}).get("_batches_that_stepped", 0),
                        uncounted=uncounted, global_step=automatic.get("completed", 0) + manual.get("completed", 0),
                        automatic=not manual.get("completed", 0), last_batch=progress.get("is_last_batch", False))


def _counts(ready: int, started: int, processed: int, completed: int) -> dict[str, int]:
    return {"ready": ready, "started": started, "processed": processed, "completed": completed}


def _progress(ready: int, started: int, processed: int, completed: int) -> dict[str, dict[str, int]]:
    counts = _counts(ready, started, processed, completed)
    return {"current": counts, "total": dict(counts)}
