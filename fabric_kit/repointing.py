"""An optimizer built from a model's parameters, re-pointed to the parameters that replaced them: a precision that
converts layers (torchao's float8 weights for FSDP's float8 all-gather) or a strategy that shards them creates new
parameter objects, and an optimizer left holding the old ones would update nothing that trains."""
from __future__ import annotations

from torch.nn import Module
from torch.optim import Optimizer


def parameter_names(module: Module) -> dict[int, str]:
    """Each parameter's name, by the parameter's id: what `repoint_optimizer` finds the replacing one by."""
    return {id(parameter): name for name, parameter in module.named_parameters()}


def repoint_optimizer(optimizer: Optimizer, names: dict[int, str], module: Module) -> None:
    """Replace, in place, each parameter of `optimizer` that `module` held before it was converted or sharded
    (`names`, taken then) by the parameter of the same name that `module` holds now, so an optimizer built from the
    model as it was updates the model as it is."""
    current = dict(module.named_parameters())
    for group in optimizer.param_groups:
        # In place: an optimizer may keep a reference to the list itself (LBFGS does).
        group["params"][:] = [current.get(names[id(p)], p) if id(p) in names else p for p in group["params"]]
