"""LambdaCallback: a callback from plain functions, e.g. `LambdaCallback(on_train_epoch_end=lambda trainer,
pl_module: ...)`; each function takes the hook's arguments."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from loops.callbacks.callback import Callback

HOOKS = sorted(name for name, value in vars(Callback).items()
               if callable(value) and not name.startswith("_") and name not in ("state_dict", "load_state_dict"))


class LambdaCallback(Callback):
    """Keyword arguments name the hooks (any of `Callback`'s); only those are called."""

    def __init__(self, **hooks: Callable[..., Any]) -> None:
        unknown = sorted(set(hooks) - set(HOOKS))
        if unknown:
            raise ValueError(f"LambdaCallback got {unknown}, which are not callback hooks; accepted: {HOOKS}")
        for name, function in hooks.items():
            if not callable(function):
                raise TypeError(f"LambdaCallback({name}=...) needs a function; got {type(function).__name__}")
            setattr(self, name, function)
