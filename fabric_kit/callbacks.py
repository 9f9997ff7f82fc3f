"""How `Fabric(callbacks=[...])` are called: `fabric.call(hook_name, ...)` and the hooks Fabric itself calls
(`on_after_setup` after each `setup`, `on_after_optimizer_step` after each step of a set-up optimizer). Each hook
receives only the keyword arguments its signature names (all of them when it takes `**kwargs`), so a callback
written for fewer arguments keeps working, as in Lightning."""
from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from fabric_kit.rank_zero import rank_zero_warn


def call_hooks(callbacks: Sequence[Any], hook_name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Call `hook_name(*args, **kwargs)` on every callback that has it; a non-callable attribute of that name is
    skipped with a warning."""
    for callback in callbacks:
        method = getattr(callback, hook_name, None)
        if method is None:
            continue
        if not callable(method):
            rank_zero_warn(f"skipping {type(callback).__name__}.{hook_name}: it is not callable "
                           f"({type(method).__name__})")
            continue
        method(*args, **accepted_kwargs(method, kwargs))


def accepted_kwargs(method: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The entries of `kwargs` that `method` takes by name (all when it takes `**kwargs` or has no signature)."""
    if not kwargs:
        return kwargs
    try:
        parameters = inspect.signature(method).parameters
    except (TypeError, ValueError):  # builtins without a signature: pass everything
        return kwargs
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return kwargs
    named = {name for name, p in parameters.items()
             if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
    return {name: value for name, value in kwargs.items() if name in named}
