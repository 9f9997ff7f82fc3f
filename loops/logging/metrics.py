"""Where logged values go once a step or epoch ends: `callback_metrics` (what callbacks and schedulers monitor),
`logged_metrics` (what loggers received) and `progress_bar_metrics`, plus the loggers themselves."""
from __future__ import annotations

from typing import Any

from torch import Tensor

from loops.logging.results import Results


class MetricsHub:
    def __init__(self) -> None:
        self.callback_metrics: dict[str, Tensor] = {}
        self.logged_metrics: dict[str, Tensor] = {}
        self.progress_bar_metrics: dict[str, float] = {}  # plain numbers, as Lightning's

    def reset(self) -> None:
        self.callback_metrics, self.logged_metrics, self.progress_bar_metrics = {}, {}, {}

    def step_end(self, results: Results, loggers: list[Any], log_now: bool, step: int, epoch: int) -> None:
        """Publish the step values of the batch that just ended; loggers get them every `log_every_n_steps`."""
        callback, logged, bar = results.step_metrics()
        self.callback_metrics.update(callback)
        self.progress_bar_metrics.update(to_floats(bar))
        self.logged_metrics.update(logged)
        if log_now and logged:
            self._send(loggers, logged, step, epoch)

    def eval_step_end(self, results: Results, loggers: list[Any], step: int, suffix: str) -> None:
        """Publish the step values of the evaluation batch that just ended, of the loader whose keys end in
        `suffix`: to the loggers at `step` (the batch's number among those its loader gave in this stage, as
        Lightning counts), not to the callback metrics."""
        _, logged, bar = results.step_metrics(suffix=suffix)
        self.progress_bar_metrics.update(to_floats(bar))
        self.logged_metrics.update(logged)
        if logged:
            self._send(loggers, logged, step, None)

    def epoch_end(self, results: Results, loggers: list[Any], step: int, epoch: int) -> dict[str, Tensor]:
        """Publish the epoch reductions of `results`; returns what the loggers got (`validate()` / `test()`
        return these, as Lightning does: `name_epoch` for values also logged per step, no `logger=False` ones)."""
        callback, logged, bar = results.epoch_metrics()
        self.callback_metrics.update(callback)
        self.progress_bar_metrics.update(to_floats(bar))
        self.logged_metrics.update(logged)
        if logged:
            self._send(loggers, logged, step, epoch)
        return logged

    def _send(self, loggers: list[Any], metrics: dict[str, Tensor], step: int, epoch: int | None) -> None:
        """A logged "step" value replaces the step; otherwise the current `epoch` is added under "epoch" (None:
        neither, the step is the one given)."""
        if not loggers:
            return
        scalars = to_floats(metrics)
        if epoch is not None and "step" in scalars:
            step = int(scalars.pop("step"))
        elif epoch is not None:
            scalars.setdefault("epoch", epoch)
        for logger in loggers:
            logger.log_metrics(scalars, step=step)
            if hasattr(logger, "save"):
                logger.save()


def to_floats(metrics: dict[str, Any]) -> dict[str, float]:
    return {key: value.item() if isinstance(value, Tensor) else value for key, value in metrics.items()}

