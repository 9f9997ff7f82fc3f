"""Creating a module without running its initialisers: the weights are about to be overwritten by a checkpoint
or a sharded materialisation, so initialising them is wasted time (minutes for billions of parameters)."""
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
    """Whether any parameter or buffer of `module` is still on the meta device (created without storage)."""
    return any(t.is_meta for t in (*module.parameters(), *module.buffers()))
