"""Profilers for the Trainer (`Trainer(profiler="simple" | "advanced" | "pytorch" | a Profiler)`), Lightning's
`lightning.pytorch.profilers`: `SimpleProfiler` (durations per action), `AdvancedProfiler` (cProfile per action),
`PyTorchProfiler` (torch.profiler, with a Chrome trace), `PassThroughProfiler` (nothing; what `profiler=None`
gives), and `Profiler`, the base class for your own."""
from loops.profilers.advanced import AdvancedProfiler
from loops.profilers.profiler import PassThroughProfiler, Profiler
from loops.profilers.pytorch import PyTorchProfiler
from loops.profilers.simple import SimpleProfiler

PROFILERS: dict[str, type[Profiler]] = {"simple": SimpleProfiler, "advanced": AdvancedProfiler,
                                        "pytorch": PyTorchProfiler}
"""The names `Trainer(profiler=...)` accepts (Lightning's, but "xla")."""


def build_profiler(profiler: Profiler | str | None) -> Profiler:
    """What `Trainer(profiler=...)` makes of its argument: a name of `PROFILERS` (any case) builds that profiler
    with its defaults, a Profiler is used as it is, None gives a `PassThroughProfiler`."""
    if profiler is None:
        return PassThroughProfiler()
    if isinstance(profiler, Profiler):
        return profiler
    if isinstance(profiler, str) and profiler.lower() in PROFILERS:
        return PROFILERS[profiler.lower()]()
    if isinstance(profiler, str) and profiler.lower() == "xla":
        raise ValueError("profiler='xla' is not provided (XLAProfiler); use 'simple', 'advanced' or 'pytorch'")
    raise ValueError(f"profiler={profiler!r} is not a profiler: pass one of {sorted(PROFILERS)}, a "
                     "loops.profilers.Profiler instance or None")


__all__ = ["AdvancedProfiler", "PassThroughProfiler", "Profiler", "PyTorchProfiler", "SimpleProfiler"]
