"""The duration of every profiled action: per action its mean, number of calls, total and share of the run."""
from __future__ import annotations

import math
import os
import time
from collections import defaultdict
from pathlib import Path

from loops.profilers.profiler import Profiler


class SimpleProfiler(Profiler):
    """Times each action (`time.perf_counter`) and reports, per action, the mean duration and the total; with
    `extended` (the default) also the number of calls and the percentage of the time since the profiler was built,
    under a "Total" row, sorted by that percentage (else by mean duration). Lightning's report.

    Raises ValueError when an action is started twice or stopped without having been started."""

    def __init__(self, dirpath: str | Path | None = None, filename: str | None = None, extended: bool = True) -> None:
        super().__init__(dirpath=dirpath, filename=filename)
        self.extended = extended
        self.current_actions: dict[str, float] = {}
        self.recorded_durations: defaultdict[str, list[float]] = defaultdict(list)
        self.start_time = time.perf_counter()

    def start(self, action_name: str) -> None:
        if action_name in self.current_actions:
            raise ValueError(f"Attempted to start {action_name} which has already started.")
        self.current_actions[action_name] = time.perf_counter()

    def stop(self, action_name: str) -> None:
        end = time.perf_counter()
        started = self.current_actions.pop(action_name, None)
        if started is None:
            raise ValueError(f"Attempting to stop recording an action ({action_name}) which was never started.")
        self.recorded_durations[action_name].append(end - started)

    def summary(self) -> str:
        title = f"{self._stage.upper()} Profiler Report" if self._stage else "Profiler Report"
        if not self.recorded_durations:
            return title + os.linesep
        width = max(len(action) for action in self.recorded_durations)
        totals = {action: math.fsum(durations) for action, durations in self.recorded_durations.items()}

        def row(*cells: str) -> str:
            return os.linesep + f"|  {cells[0]:<{width}s}\t|" + "".join(f"  {cell:<15}\t|" for cell in cells[1:])

        if self.extended:
            elapsed = time.perf_counter() - self.start_time
            header = row("Action", "Mean duration (s)", "Num calls", "Total time (s)", "Percentage %")
            calls = sum(len(durations) for durations in self.recorded_durations.values())
            first = [row("Total", "-", str(calls), f"{elapsed:.5}", "100 %")]
            order = sorted(totals, key=totals.__getitem__, reverse=True)
            rows = [row(a, f"{totals[a] / len(self.recorded_durations[a]):.5}", str(len(self.recorded_durations[a])),
                        f"{totals[a]:.5}", f"{100.0 * totals[a] / elapsed:.5}") for a in order]
        else:
            header = row("Action", "Mean duration (s)", "Total time (s)")
            first = []
            means = {action: totals[action] / len(d) for action, d in self.recorded_durations.items()}
            rows = [row(a, f"{means[a]:.5}", f"{totals[a]:.5}")
                    for a in sorted(means, key=means.__getitem__, reverse=True)]
        rule = os.linesep + "-" * len(header.strip(os.linesep).expandtabs())
        table = rule + header + rule + (("".join(first) + rule) if first else "") + "".join(rows) + rule
        return title + os.linesep + table + os.linesep
