"""RichProgressBar: rich's live progress display on a terminal (needs `pip install 'fabric_kit[rich]'`), plain
lines elsewhere (see ProgressBar)."""
from __future__ import annotations

from typing import Any

from loops.callbacks.progress.line_display import Display, Metrics, format_value
from loops.callbacks.progress.progress_bar import ProgressBar


class RichProgressBar(ProgressBar):
    """`refresh_rate`: update every N batches (0 turns the bar off); `leave`: keep each finished epoch's bar;
    `console_kwargs`: passed to `rich.console.Console`."""

    def __init__(self, refresh_rate: int = 1, leave: bool = False, console_kwargs: dict[str, Any] | None = None,
                 line_every_n_steps: int | None = None, line_every_seconds: float | None = 30.0) -> None:
        super().__init__(line_every_n_steps, line_every_seconds)
        if isinstance(refresh_rate, bool) or not isinstance(refresh_rate, int) or refresh_rate < 0:
            raise ValueError(f"RichProgressBar(refresh_rate={refresh_rate!r}) is not valid; pass an int >= 0 "
                             "(0 turns the bar off)")
        _import_rich()  # fail when the bar is created, not in the middle of a run
        self.refresh_rate, self.leave, self.console_kwargs = refresh_rate, leave, dict(console_kwargs or {})
        if refresh_rate == 0:
            self.disable()

    def _terminal_display(self) -> Display:
        return RichDisplay(self.refresh_rate, self.leave, self.console_kwargs)


def _import_rich() -> Any:
    try:
        import rich.progress
    except ImportError as missing:
        raise ImportError("RichProgressBar needs rich: pip install 'fabric_kit[rich]'") from missing
    return rich.progress


class RichDisplay(Display):
    def __init__(self, refresh_rate: int, leave: bool, console_kwargs: dict[str, Any]) -> None:
        progress = _import_rich()
        from rich.console import Console

        self.refresh_rate, self.leave = refresh_rate, leave
        self._progress = progress.Progress(
            progress.TextColumn("[progress.description]{task.description}"), progress.BarColumn(),
            progress.MofNCompleteColumn(), progress.TimeElapsedColumn(), progress.TimeRemainingColumn(),
            progress.TextColumn("{task.fields[metrics]}"), console=Console(**console_kwargs))
        self._progress.start()
        self._tasks: dict[str, Any] = {}

    def start(self, kind: str, description: str, total: int | None) -> None:
        task = self._tasks.pop(kind, None)
        if task is not None and not self.leave:
            self._progress.remove_task(task)
        self._tasks[kind] = self._progress.add_task(description, total=total, metrics="")

    def update(self, kind: str, done: int, metrics: Metrics) -> None:
        task = self._tasks.get(kind)
        if task is not None and done % self.refresh_rate == 0:
            self._draw(task, done, metrics)

    def finish(self, kind: str, done: int, metrics: Metrics) -> None:
        task = self._tasks.get(kind)
        if task is None:
            return
        self._draw(task, done, metrics)
        if kind == "train":
            return  # stays until the next epoch replaces it (or, with leave=True, stays below it)
        del self._tasks[kind]
        if kind in ("sanity", "validate"):
            self._progress.remove_task(task)

    def _draw(self, task: Any, done: int, metrics: Metrics) -> None:
        shown = " ".join(f"{key}: {format_value(value)}" for key, value in metrics().items())
        self._progress.update(task, completed=done, metrics=shown)

    def write(self, text: str) -> None:
        self._progress.console.print(text, markup=False, highlight=False)

    def close(self) -> None:
        self._progress.stop()
