"""Precision: how tensors, modules and the backward pass are typed. The base class is plain float32."""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer


class Precision:
    """32-bit training: every method is the identity, so the base class costs nothing on the hot path.

    Subclasses that change inputs, outputs or the forward context set `transforms_io = True`; the wrapped module
    checks that one flag instead of calling three no-op methods per forward.
    """

    precision = "32-true"  # the setting, as Lightning's plugins name it
    transforms_io = False
    materializes_meta_modules = False
    """True when `convert_module` gives a model created on the meta device its storage (a quantizing precision
    does, layer by layer): `fabric.init_module(empty_init=True)` then creates the model there, so that its
    full-precision weights never exist all at once."""

    def convert_module(self, module: torch.nn.Module) -> torch.nn.Module:
        return module

    def module_init_context(self) -> AbstractContextManager[Any]:
        """Context under which modules are created (e.g. with a default dtype)."""
        return self.tensor_init_context()

    def tensor_init_context(self) -> AbstractContextManager[Any]:
        return nullcontext()

    def forward_context(self) -> AbstractContextManager[Any]:
        return nullcontext()

    def convert_input(self, data: Any) -> Any:
        return data

    def convert_output(self, data: Any) -> Any:
        return data

    def backward(self, tensor: Tensor, module: torch.nn.Module | None, *args: Any, **kwargs: Any) -> None:
        tensor.backward(*args, **kwargs)

    def optimizer_step(self, optimizer: Optimizer, **kwargs: Any) -> Any:
        return optimizer.step(**kwargs)

    def unscale_gradients(self, optimizer: Optimizer) -> None:
        """Bring gradients to their true scale before they are clipped or inspected."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass
