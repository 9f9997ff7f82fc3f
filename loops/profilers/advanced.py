"""cProfile per action: which Python functions each profiled action spent its time in."""
from __future__ import annotations

import cProfile
import io
import os
import pstats
from pathlib import Path
from typing import Any

from loops.profilers.profiler import Profiler


class AdvancedProfiler(Profiler):
    """One `cProfile.Profile` per action; the report is each action's `pstats` table sorted by cumulative time.

    Only one cProfile records at a time, so an action started inside another records the inner one alone until it
    stops; the outer one then records again (Lightning's leaves the outer one off).

    Args:
        dirpath, filename: as `Profiler`'s.
        line_count_restriction: how many functions each action's table lists: a count (int) or a fraction of
            them (a float in [0, 1]).
        dump_stats: also write each action's raw statistics to `<dirpath>/<stage>-<filename>-<rank>-<action>.prof`
            (readable with `pstats` or snakeviz); needs a `dirpath` or the Trainer's log directory.
    """

    def __init__(self, dirpath: str | Path | None = None, filename: str | None = None,
                 line_count_restriction: float = 1.0, dump_stats: bool = False) -> None:
        super().__init__(dirpath=dirpath, filename=filename)
        self.line_count_restriction = line_count_restriction
        self.dump_stats = dump_stats
        self.profiled_actions: dict[str, cProfile.Profile] = {}
        self._running: list[str] = []  # the started actions, innermost last: only that one records

    def start(self, action_name: str) -> None:
        if self._running:
            self.profiled_actions[self._running[-1]].disable()
        profile = self.profiled_actions.get(action_name)
        if profile is None:
            profile = self.profiled_actions[action_name] = cProfile.Profile()
        self._running.append(action_name)
        profile.enable()

    def stop(self, action_name: str) -> None:
        if action_name not in self._running:
            raise ValueError(f"Attempting to stop recording an action ({action_name}) which was never started.")
        self.profiled_actions[action_name].disable()
        self._running.remove(action_name)
        if self._running:
            self.profiled_actions[self._running[-1]].enable()

    def summary(self) -> str:
        stats = {}
        for action, profile in self.profiled_actions.items():
            if self.dump_stats:
                self._dump(action, profile)
            text = io.StringIO()
            pstats.Stats(profile, stream=text).strip_dirs().sort_stats("cumulative").print_stats(
                self.line_count_restriction)
            stats[action] = text.getvalue()
        return self._stats_to_str(stats)

    def _dump(self, action: str, profile: cProfile.Profile) -> None:
        if not self.dirpath:
            raise ValueError("AdvancedProfiler(dump_stats=True) needs a directory to write the .prof files to: pass "
                             "dirpath=..., or run it in a Trainer, whose log_dir it then uses")
        os.makedirs(self.dirpath, exist_ok=True)
        profile.dump_stats(os.path.join(self.dirpath, self._prepare_filename(action, extension=".prof")))

    def teardown(self, stage: str | None) -> None:
        super().teardown(stage)
        for action in self._running:
            self.profiled_actions[action].disable()
        self.profiled_actions.clear()
        self._running.clear()

    def __getstate__(self) -> dict[str, Any]:
        """cProfile objects do not pickle: a spawned process starts recording afresh."""
        return {**super().__getstate__(), "profiled_actions": {}, "_running": []}
