"""Timer: measure the time each stage takes and stop fit once the training time reaches `duration`; the elapsed
training time is saved in checkpoints, so a resumed run counts on from it."""
from __future__ import annotations

import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from loops.callbacks.callback import Callback
from loops.trainer.arguments import parse_duration

if TYPE_CHECKING:
    from loops.trainer.trainer import Trainer

_STAGES = ("train", "validate", "test")


class Timer(Callback):
    """`duration`: "DD:HH:MM:SS", a `timedelta`, a dict like {"hours": 1}, or None (measure only).
    `interval`: check after every training "step" or every "epoch". `verbose`: say when time is up."""

    def __init__(self, duration: str | timedelta | dict[str, int] | None = None, interval: str = "step",
                 verbose: bool = True) -> None:
        try:
            seconds = parse_duration("duration", duration)
        except (ValueError, TypeError):
            raise ValueError(f"Timer(duration={duration!r}) is not valid; accepted: 'DD:HH:MM:SS', a "
                             "datetime.timedelta, a dict like {'hours': 1}, or None") from None
        if interval not in ("step", "epoch"):
            raise ValueError(f"Timer(interval={interval!r}) is not valid; accepted: 'step', 'epoch'")
        self._duration = seconds
        self._interval, self._verbose = interval, verbose
        self._start: dict[str, float | None] = dict.fromkeys(_STAGES)
        self._end: dict[str, float | None] = dict.fromkeys(_STAGES)
        self._offset = 0.0  # training time of the run this one resumed

    def start_time(self, stage: str = "train") -> float | None:
        """`time.monotonic()` when `stage` ("train", "validate", "test") last started."""
        return self._start[stage]

    def end_time(self, stage: str = "train") -> float | None:
        return self._end[stage]

    def time_elapsed(self, stage: str = "train") -> float:
        """Seconds `stage` has run (so far, if it is running); training includes a resumed run's time."""
        start, end = self._start[stage], self._end[stage]
        offset = self._offset if stage == "train" else 0.0
        if start is None:
            return offset
        return offset + (end if end is not None else time.monotonic()) - start

    def time_remaining(self, stage: str = "train") -> float | None:
        return None if self._duration is None else self._duration - self.time_elapsed(stage)

    def _begin(self, stage: str) -> None:
        self._start[stage], self._end[stage] = time.monotonic(), None

    def _finish(self, stage: str) -> None:
        self._end[stage] = time.monotonic()

    def on_train_start(self, trainer: Trainer, pl_module: Any) -> None:
        self._begin("train")

    def on_train_end(self, trainer: Trainer, pl_module: Any) -> None:
        self._finish("train")

    def on_validation_start(self, trainer: Trainer, pl_module: Any) -> None:
        self._begin("validate")

    def on_validation_end(self, trainer: Trainer, pl_module: Any) -> None:
        self._finish("validate")

    def on_test_start(self, trainer: Trainer, pl_module: Any) -> None:
        self._begin("test")

    def on_test_end(self, trainer: Trainer, pl_module: Any) -> None:
        self._finish("test")

    def on_fit_start(self, trainer: Trainer, pl_module: Any) -> None:
        if self._duration is not None and self.time_elapsed() >= self._duration:
            trainer.should_stop = True  # a run resumed with its time already spent

    def on_train_batch_end(self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._interval == "step":
            self._check(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: Any) -> None:
        if self._interval == "epoch":
            self._check(trainer)

    def _check(self, trainer: Trainer) -> None:
        if self._duration is None:
            return
        stop = self.time_elapsed() >= self._duration
        if trainer.world_size > 1:  # clocks differ: rank 0 decides for every process
            stop = trainer.strategy.broadcast(stop)
        if stop:
            trainer.should_stop = True
            if self._verbose and trainer.is_global_zero:
                print(f"Time limit reached. Elapsed time is {timedelta(seconds=int(self.time_elapsed()))}. "
                      "Signaling Trainer to stop.")

    def state_dict(self) -> dict[str, Any]:
        return {"time_elapsed": {stage: self.time_elapsed(stage) for stage in _STAGES}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._offset = state_dict["time_elapsed"].get("train", 0.0)
