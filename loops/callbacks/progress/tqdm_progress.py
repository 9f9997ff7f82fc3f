"""TQDMProgressBar, the Trainer's default: tqdm bars on a terminal (epoch, validation, test, predict), showing the
`prog_bar` metrics and `v_num`; plain lines elsewhere (see ProgressBar)."""
from __future__ import annotations

import sys
import time
import warnings
from typing import Any

from loops.callbacks.progress.line_display import Display, Metrics, format_value
from loops.callbacks.progress.progress_bar import ProgressBar

# Which evaluation bars stay on screen when they finish (epoch bars follow `leave`).
_KEEP = {"sanity": False, "validate": False, "test": True, "predict": True}


class TQDMProgressBar(ProgressBar):
    """`refresh_rate`: redraw every N batches (0 turns the bar off); `process_position`: line offset, for several
    bars in one terminal; `leave`: keep each finished epoch's bar on screen. Needs tqdm
    (`pip install 'fabric_kit[progress]'`); `line_every_n_steps` / `line_every_seconds` apply off a terminal."""

    def __init__(self, refresh_rate: int = 1, process_position: int = 0, leave: bool = False,
                 line_every_n_steps: int | None = None, line_every_seconds: float | None = 30.0) -> None:
        super().__init__(line_every_n_steps, line_every_seconds)
        if isinstance(refresh_rate, bool) or not isinstance(refresh_rate, int) or refresh_rate < 0:
            raise ValueError(f"TQDMProgressBar(refresh_rate={refresh_rate!r}) is not valid; pass an int >= 0 "
                             "(0 turns the bar off)")
        self.refresh_rate, self.process_position, self.leave = refresh_rate, process_position, leave
        if refresh_rate == 0:
            self.disable()

    def _terminal_display(self) -> Display:
        try:
            import tqdm  # noqa: F401
        except ImportError:
            # The default bar must not stop a run: report progress as lines and say how to get the bar.
            warnings.warn("TQDMProgressBar draws with tqdm, which is not installed (pip install "
                          "'fabric_kit[progress]'); progress is written as plain lines instead", stacklevel=2)
            return self._line_display()
        return TqdmDisplay(self.refresh_rate, self.process_position, self.leave)


class TqdmDisplay(Display):
    def __init__(self, refresh_rate: int, position: int, leave: bool) -> None:
        from tqdm import tqdm

        self._tqdm, self.refresh_rate, self.position, self.leave = tqdm, refresh_rate, position, leave
        self._bars: dict[str, Any] = {}
        self._drawn_at: dict[str, float] = {}

    def start(self, kind: str, description: str, total: int | None) -> None:
        bar = self._bars.get(kind)
        if bar is not None and kind == "train" and not self.leave:
            bar.reset(total=total)  # one epoch bar, redrawn in place
            bar.set_description(description, refresh=False)
            return
        if bar is not None:
            bar.close()
        nested = kind != "train" and "train" in self._bars
        self._bars[kind] = self._tqdm(total=total, desc=description, file=sys.stdout, dynamic_ncols=True,
                                      leave=True if kind == "train" else _KEEP[kind],
                                      position=self.position + int(nested), smoothing=0)
        self._drawn_at[kind] = 0.0

    def update(self, kind: str, done: int, metrics: Metrics) -> None:
        bar = self._bars.get(kind)
        if bar is None or (done % self.refresh_rate and done != bar.total):
            return
        now = time.monotonic()
        if now - self._drawn_at[kind] >= bar.mininterval or done == bar.total:  # metrics only when tqdm draws
            self._drawn_at[kind] = now
            bar.set_postfix(_postfix(metrics()), refresh=False)
        bar.update(done - bar.n)

    def finish(self, kind: str, done: int, metrics: Metrics) -> None:
        bar = self._bars.get(kind)
        if bar is None:
            return
        bar.n = done
        bar.set_postfix(_postfix(metrics()), refresh=False)
        bar.refresh()
        if kind != "train" or self.leave:
            bar.close()
            del self._bars[kind]

    def write(self, text: str) -> None:
        self._tqdm.write(text, file=sys.stdout)

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()


def _postfix(metrics: dict[str, Any]) -> dict[str, str]:
    return {key: format_value(value) for key, value in metrics.items()}
