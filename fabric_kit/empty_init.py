"""Creating a module without running its initialisers: the weights are about to be overwritten by a checkpoint
or a sharded materialisation, so initialising them is wasted time (minutes for billions of parameters); and what a
model created on the meta device needs before it gets storage."""
from __future__ import annotations

from typing import Any

from torch.nn import Module
from torch.overrides import TorchFunctionMode


class SkipInit(TorchFunctionMode):
    """Turns every `torch.nn.init` function into a no-op that returns its tensor untouched."""

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        if getattr(func, "__module__", None) == "torch.nn.init":
            return args[0] if args else (kwargs or {}).get("tensor")
        return func(*args, **(kwargs or {}))


def has_meta_tensors(module: Module) -> bool:
    """Whether any parameter or buffer of `module` or its children is on the meta device."""
    return any(t.is_meta for t in (*module.parameters(), *module.buffers()))


def check_materializable(module: Module) -> None:
    """Before a meta-device model gets storage (from a sharding strategy, or a precision that quantizes it layer by
    layer): every module holding parameters or buffers of its own must be able to initialise them again
    (`reset_parameters`), else they would be left as uninitialised memory."""
    lacking = sorted({type(m).__name__ for m in module.modules() if owns_meta_tensors(m)
                      and not callable(getattr(m, "reset_parameters", None))})
    if lacking:
        raise TypeError(f"module classes {lacking} were created on the meta device (`fabric.init_module("
                        "empty_init=True)`) and hold parameters or buffers but have no `reset_parameters()`, so "
                        "they cannot be initialised when the model is set up; add `reset_parameters()` to them or "
                        "create the model without empty_init")


def owns_meta_tensors(module: Module) -> bool:
    """Whether `module` itself (not its children) holds a parameter or buffer on the meta device."""
    return any(t.is_meta for t in (*module.parameters(recurse=False), *module.buffers(recurse=False)))
