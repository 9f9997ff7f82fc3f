"""The ProgressBar base: follows the Trainer's stages and batches and hands each to a display. On a terminal the
display is the subclass's (tqdm, rich); when stdout is not a terminal (CI logs, SLURM files) it is a LineDisplay,
which writes one plain line every `line_every_n_steps` steps or `line_every_seconds` seconds instead of
carriage-return frames. Only global rank 0 shows anything."""
from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from loops.callbacks.callback import Callback
from loops.callbacks.progress.line_display import Display, LineDisplay

if TYPE_CHECKING:
    from loops.trainer.trainer import Trainer

_EVAL_TOTALS = {"validate": "num_val_batches", "test": "num_test_batches", "predict": "num_predict_batches"}


class ProgressBar(Callback):
    """Subclasses draw on a terminal through `_terminal_display()`; override `get_metrics` to change what is shown.

    `line_every_n_steps` / `line_every_seconds` (None turns one off) set how often the non-terminal display
    writes a line; it also writes one when each epoch or evaluation ends. Defaults: every 30 seconds."""

    monitors_metrics = True  # the epoch's end is shown after the epoch-end metrics are published

    def __init__(self, line_every_n_steps: int | None = None, line_every_seconds: float | None = 30.0) -> None:
        if line_every_n_steps is not None and (isinstance(line_every_n_steps, bool)
                                               or not isinstance(line_every_n_steps, int) or line_every_n_steps < 1):
            raise ValueError(f"line_every_n_steps={line_every_n_steps!r} is not valid; pass a positive int or None")
        if line_every_seconds is not None and not line_every_seconds > 0:
            raise ValueError(f"line_every_seconds={line_every_seconds!r} is not valid; pass a positive number or "
                             "None")
        self.line_every_n_steps, self.line_every_seconds = line_every_n_steps, line_every_seconds
        self._enabled = True
        self._display: Display | None = None
        self._trainer: Trainer | None = None
        self._pl_module: Any = None
        self._counts: dict[str, int] = {}  # batches done in each display kind's current run

    # -- public API (Lightning's names) ----------------------------------------------------------------------------
    @property
    def trainer(self) -> Trainer:
        if self._trainer is None:
            raise RuntimeError(f"{type(self).__name__} is not attached to a Trainer yet")
        return self._trainer

    @property
    def pl_module(self) -> Any:
        return self._pl_module

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    @property
    def is_disabled(self) -> bool:
        return not self._enabled

    def enable(self) -> None:
        self._enabled = True

    def disable(self) -> None:
        """Stop showing progress (the Trainer does this on every rank but 0)."""
        self._enabled = False

    @property
    def sanity_check_description(self) -> str:
        return "Sanity Checking"

    @property
    def train_description(self) -> str:
        return "Training"

    @property
    def validation_description(self) -> str:
        return "Validation"

    @property
    def test_description(self) -> str:
        return "Testing"

    @property
    def predict_description(self) -> str:
        return "Predicting"

    @property
    def total_train_batches(self) -> int | float:
        return self.trainer.num_training_batches

    @property
    def total_val_batches(self) -> int | float:
        return sum(self.trainer.num_val_batches)

    @property
    def train_batch_idx(self) -> int:
        """Batches done in the running epoch (counting those a resumed run had done)."""
        return self._counts.get("train", 0)

    @property
    def val_batch_idx(self) -> int:
        return self._counts.get("sanity" if self.trainer.sanity_checking else "validate", 0)

    @property
    def test_batch_idx(self) -> int:
        return self._counts.get("test", 0)

    @property
    def predict_batch_idx(self) -> int:
        return self._counts.get("predict", 0)

    def get_metrics(self, trainer: Trainer, pl_module: Any) -> dict[str, Any]:
        """What the bar shows: `v_num` (the loggers' version) and every value logged with `prog_bar=True`."""
        return {**standard_metrics(trainer), **trainer.progress_bar_metrics}

    def print(self, *args: Any, sep: str = " ", **kwargs: Any) -> None:
        """Print without breaking the bar (above it on a terminal)."""
        if self._display is not None:
            self._display.write(sep.join(map(str, args)))
        elif self._trainer is None or self._trainer.is_global_zero:
            print(*args, sep=sep, **kwargs)

    def _terminal_display(self) -> Display:
        """What to draw on a terminal; subclasses return their bars. The base writes lines there too."""
        return self._line_display()

    def _line_display(self) -> Display:
        return LineDisplay(sys.stdout, self.line_every_n_steps, self.line_every_seconds)

    # -- choosing the display ------------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        self._trainer, self._pl_module = trainer, pl_module
        if not trainer.is_global_zero:
            self.disable()
        if self._enabled and self._display is None:
            self._display = self._terminal_display() if _is_terminal(sys.stdout) else self._line_display()

    def teardown(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        if self._display is not None:
            self._display.close()
            self._display = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_display": None, "_trainer": None, "_pl_module": None}

    # -- stages -------------------------------------------------------------------------------------------------
    def _start(self, kind: str, description: str, total: int | float | None, done: int = 0) -> None:
        self._counts[kind] = done
        if self._display is not None:
            self._display.start(kind, description, None if total is None or total == math.inf else int(total))

    def _advance(self, kind: str) -> None:
        count = self._counts[kind] = self._counts.get(kind, 0) + 1
        if self._display is not None:
            self._display.update(kind, count, self._metrics_getter)

    def _finish(self, kind: str) -> None:
        if self._display is not None:
            self._display.finish(kind, self._counts.get(kind, 0), self._metrics_getter)

    @property
    def _metrics_getter(self) -> Callable[[], dict[str, Any]]:
        return lambda: self.get_metrics(self.trainer, self._pl_module)

    def on_sanity_check_end(self, trainer: Trainer, pl_module: Any) -> None:
        self._finish("sanity")

    def on_train_epoch_start(self, trainer: Trainer, pl_module: Any) -> None:
        # A resumed epoch starts where it stopped.
        self._start("train", f"Epoch {trainer.current_epoch}", self.total_train_batches,
                    trainer.run_state.progress.batch_idx)

    def on_train_batch_end(self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._advance("train")

    def on_train_epoch_end(self, trainer: Trainer, pl_module: Any) -> None:
        self._finish("train")

    def on_validation_start(self, trainer: Trainer, pl_module: Any) -> None:
        if trainer.sanity_checking:  # the loaders are known from here on
            self._start("sanity", self.sanity_check_description, sum(trainer.num_sanity_val_batches))
        else:
            self._start("validate", self.validation_description, _eval_total(trainer, "validate"))

    def on_validation_batch_end(self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        self._advance("sanity" if trainer.sanity_checking else "validate")

    def on_validation_end(self, trainer: Trainer, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self._finish("validate")

    def on_test_start(self, trainer: Trainer, pl_module: Any) -> None:
        self._start("test", self.test_description, _eval_total(trainer, "test"))

    def on_test_batch_end(self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                          dataloader_idx: int = 0) -> None:
        self._advance("test")

    def on_test_end(self, trainer: Trainer, pl_module: Any) -> None:
        self._finish("test")

    def on_predict_start(self, trainer: Trainer, pl_module: Any) -> None:
        self._start("predict", self.predict_description, _eval_total(trainer, "predict"))

    def on_predict_batch_end(self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                             dataloader_idx: int = 0) -> None:
        self._advance("predict")

    def on_predict_end(self, trainer: Trainer, pl_module: Any) -> None:
        self._finish("predict")


def standard_metrics(trainer: Trainer) -> dict[str, Any]:
    """{"v_num": version} when the run has loggers (the last 4 characters of a string version)."""
    loggers = trainer.loggers
    if not loggers:
        return {}
    if len(loggers) == 1:
        version = getattr(loggers[0], "version", None)
    else:
        version = "_".join(dict.fromkeys(str(getattr(logger, "version", "")) for logger in loggers))
    if version in ("", None):
        return {}
    return {"v_num": version[-4:] if isinstance(version, str) else version}


def _eval_total(trainer: Trainer, stage: str) -> int | float | None:
    """Batches the running evaluation will take over all its loaders, when the Trainer knows them."""
    if stage == "validate" and trainer.state.fn != "fit":
        return None  # Trainer.validate() does not publish its loader sizes
    limits = getattr(trainer, _EVAL_TOTALS[stage], None)
    return sum(limits) if limits else None


def _is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False
