"""What a progress bar draws on, and the display for streams that are not terminals: one plain line per report,
never carriage-return frames, so CI logs and SLURM output files stay readable."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TextIO

Metrics = Callable[[], dict[str, Any]]


class Display:
    """One running bar per kind ("sanity", "train", "validate", "test", "predict"). `metrics` is called only when
    something is drawn, so reading metrics costs nothing on batches that draw nothing."""

    def start(self, kind: str, description: str, total: int | None) -> None: ...
    def update(self, kind: str, done: int, metrics: Metrics) -> None: ...
    def finish(self, kind: str, done: int, metrics: Metrics) -> None: ...
    def write(self, text: str) -> None: ...
    def close(self) -> None: ...


class LineDisplay(Display):
    """A line when `every_n_steps` batches or `every_seconds` seconds have passed since the last line of that bar
    (whichever comes first; None turns one off), and a final line when the bar finishes, e.g.
    `Epoch 3: 50/100 [00:02<00:02, 24.10it/s] train_loss=0.123 v_num=0`."""

    def __init__(self, stream: TextIO, every_n_steps: int | None, every_seconds: float | None) -> None:
        self.stream, self.every_n_steps, self.every_seconds = stream, every_n_steps, every_seconds
        self._bars: dict[str, _LineBar] = {}

    def start(self, kind: str, description: str, total: int | None) -> None:
        self._bars[kind] = _LineBar(description, total, time.monotonic())

    def update(self, kind: str, done: int, metrics: Metrics) -> None:
        bar = self._bars.get(kind)
        if bar is None:
            return
        steps_due = self.every_n_steps is not None and done - bar.reported >= self.every_n_steps
        if steps_due or (self.every_seconds is not None and time.monotonic() - bar.reported_at >= self.every_seconds):
            self._report(bar, done, metrics)

    def finish(self, kind: str, done: int, metrics: Metrics) -> None:
        bar = self._bars.pop(kind, None)
        if bar is not None:
            self._report(bar, done, metrics)

    def write(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def _report(self, bar: _LineBar, done: int, metrics: Metrics) -> None:
        now = time.monotonic()
        bar.reported, bar.reported_at = done, now
        self.write(format_line(bar.description, done, bar.total, now - bar.started, metrics()))


class _LineBar:
    def __init__(self, description: str, total: int | None, started: float) -> None:
        self.description, self.total, self.started = description, total, started
        self.reported, self.reported_at = 0, started


def format_line(description: str, done: int, total: int | None, elapsed: float, metrics: dict[str, Any]) -> str:
    rate = done / elapsed if elapsed > 0 else 0.0
    timing = _clock(elapsed)
    if total is not None and rate > 0:
        timing += "<" + _clock(max(0.0, total - done) / rate)
    count = f"{done}/{total}" if total is not None else f"{done}"
    shown = " ".join(f"{key}={format_value(value)}" for key, value in metrics.items())
    return f"{description}: {count} [{timing}, {rate:.2f}it/s]" + (f" {shown}" if shown else "")


def format_value(value: Any) -> str:
    """Numbers with 4 significant digits (tensors read as Python numbers), anything else as text."""
    if hasattr(value, "item") and getattr(value, "numel", lambda: 1)() == 1:
        value = value.item()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"
