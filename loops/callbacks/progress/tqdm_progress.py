"""TQDMProgressBar, the Trainer's default: tqdm bars on a terminal (epoch, validation, test, predict), showing the
`prog_bar` metrics and `v_num`; plain lines elsewhere (see ProgressBar)."""
from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

from loops.callbacks.progress.line_display import Display, Metrics, format_value
from loops.callbacks.progress.progress_bar import ProgressBar


class TQDMProgressBar(ProgressBar):
    """`refresh_rate`: redraw every N batches (0 turns the bar off); `process_position`: line offset, for several
    bars in one terminal; `leave`: keep each finished epoch's bar on screen. Needs tqdm
    (`pip install 'fabric_kit[progress]'`); `line_every_n_steps` / `line_every_seconds` apply off a terminal.

    Customize it as in Lightning: override `init_sanity_tqdm` / `init_train_tqdm` / `init_validation_tqdm` /
    `init_test_tqdm` / `init_predict_tqdm` (each returns the tqdm bar of its stage, e.g. `super()`'s with
    `disable = True`), or `get_metrics`; `train_progress_bar`, `val_progress_bar`, `test_progress_bar` and
    `predict_progress_bar` are the bars drawing now (a TypeError before one is, and off a terminal, where
    progress is written as lines)."""

    def __init__(self, refresh_rate: int = 1, process_position: int = 0, leave: bool = False,
                 line_every_n_steps: int | None = None, line_every_seconds: float | None = 30.0) -> None:
        super().__init__(line_every_n_steps, line_every_seconds)
        if isinstance(refresh_rate, bool) or not isinstance(refresh_rate, int) or refresh_rate < 0:
            raise ValueError(f"TQDMProgressBar(refresh_rate={refresh_rate!r}) is not valid; pass an int >= 0 "
                             "(0 turns the bar off)")
        self.refresh_rate, self.process_position, self.leave = refresh_rate, process_position, leave
        if refresh_rate == 0:
            self.disable()

    # -- Lightning's customization points -------------------------------------------------------------------------
    def init_sanity_tqdm(self) -> Any:
        """The bar of the sanity check."""
        return self._tqdm(self.sanity_check_description, 0, leave=False)

    def init_train_tqdm(self) -> Any:
        """The bar of the training epochs (one for the run, or one per epoch with `leave`)."""
        return self._tqdm(self.train_description, 0, leave=True, smoothing=0)

    def init_validation_tqdm(self) -> Any:
        """The bar of a validation: below the training bar during fit, which it leaves on screen alone."""
        in_fit = self.trainer.state.fn != "validate"
        return self._tqdm(self.validation_description, int(in_fit), leave=not in_fit)

    def init_test_tqdm(self) -> Any:
        """The bar of a test run."""
        return self._tqdm(self.test_description, 0, leave=True)

    def init_predict_tqdm(self) -> Any:
        """The bar of a prediction run."""
        return self._tqdm(self.predict_description, 0, leave=True, smoothing=0)

    def _tqdm(self, description: str, offset: int, **kwargs: Any) -> Any:
        from tqdm import tqdm
        return tqdm(desc=description, position=2 * self.process_position + offset, disable=self.is_disabled,
                    dynamic_ncols=True, file=sys.stdout, **kwargs)

    @property
    def train_progress_bar(self) -> Any:
        return self._bar("train")

    @train_progress_bar.setter
    def train_progress_bar(self, bar: Any) -> None:
        self._set_bar("train", bar)

    @property
    def val_progress_bar(self) -> Any:
        """The validation bar, the sanity check's while it runs."""
        return self._bar(self._validation_stage())

    @val_progress_bar.setter
    def val_progress_bar(self, bar: Any) -> None:
        self._set_bar(self._validation_stage(), bar)

    def _validation_stage(self) -> str:
        """Which validation bar is meant: the sanity check's while it runs, else validation's."""
        return "sanity" if self._trainer is not None and self._trainer.sanity_checking else "validate"

    @property
    def test_progress_bar(self) -> Any:
        return self._bar("test")

    @test_progress_bar.setter
    def test_progress_bar(self, bar: Any) -> None:
        self._set_bar("test", bar)

    @property
    def predict_progress_bar(self) -> Any:
        return self._bar("predict")

    @predict_progress_bar.setter
    def predict_progress_bar(self, bar: Any) -> None:
        self._set_bar("predict", bar)

    def _bar(self, kind: str) -> Any:
        bar = self._display.bars.get(kind) if isinstance(self._display, TqdmDisplay) else None
        if bar is None:
            raise TypeError(f"{type(self).__name__} has no {kind} bar drawing now (none has started, or stdout is "
                            "not a terminal and progress is written as lines)")
        return bar

    def _set_bar(self, kind: str, bar: Any) -> None:
        if not isinstance(self._display, TqdmDisplay):
            raise TypeError(f"{type(self).__name__} draws no bars now (not set up, or stdout is not a terminal)")
        self._display.bars[kind] = bar

    def _terminal_display(self) -> Display:
        try:
            import tqdm  # noqa: F401
        except ImportError:
            # The default bar must not stop a run: report progress as lines and say how to get the bar.
            warnings.warn("TQDMProgressBar draws with tqdm, which is not installed (pip install "
                          "'fabric_kit[progress]'); progress is written as plain lines instead", stacklevel=2)
            return self._line_display()
        init = {"sanity": self.init_sanity_tqdm, "train": self.init_train_tqdm, "validate": self.init_validation_tqdm,
                "test": self.init_test_tqdm, "predict": self.init_predict_tqdm}
        return TqdmDisplay(lambda kind: init[kind](), tqdm.tqdm.write, self.refresh_rate, self.leave)


class TqdmDisplay(Display):
    """Draws each kind's bar, made by `new_bar(kind)` when the kind starts (the training bar is reset for each
    epoch unless `leave`); the training bar's description is the epoch's, the others keep the one they were made
    with."""

    def __init__(self, new_bar: Callable[[str], Any], write: Callable[..., None], refresh_rate: int,
                 leave: bool) -> None:
        self.new_bar, self._write, self.refresh_rate, self.leave = new_bar, write, refresh_rate, leave
        self.bars: dict[str, Any] = {}
        self._drawn_at: dict[str, float] = {}

    def start(self, kind: str, description: str, total: int | None) -> None:
        bar = self.bars.get(kind)
        if bar is not None and (kind != "train" or self.leave):
            bar.close()
            bar = None
        if bar is None:
            bar = self.bars[kind] = self.new_bar(kind)
        bar.reset(total=total)
        if kind == "train":  # one epoch bar, redrawn in place
            bar.set_description(description, refresh=False)
        self._drawn_at[kind] = 0.0

    def update(self, kind: str, done: int, metrics: Metrics) -> None:
        bar = self.bars.get(kind)
        if bar is None or (done % self.refresh_rate and done != bar.total):
            return
        now = time.monotonic()
        # metrics only when tqdm draws
        if now - self._drawn_at[kind] >= getattr(bar, "mininterval", 0.0) or done == bar.total:
            self._drawn_at[kind] = now
            bar.set_postfix(_postfix(metrics()), refresh=False)
        bar.update(done - bar.n)

    def finish(self, kind: str, done: int, metrics: Metrics) -> None:
        bar = self.bars.get(kind)
        if bar is None:
            return
        bar.n = done
        bar.set_postfix(_postfix(metrics()), refresh=False)
        bar.refresh()
        if kind != "train" or self.leave:
            bar.close()
            del self.bars[kind]

    def write(self, text: str) -> None:
        self._write(text, file=sys.stdout)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


def _postfix(metrics: dict[str, Any]) -> dict[str, str]:
    return {key: format_value(value) for key, value in metrics.items()}
