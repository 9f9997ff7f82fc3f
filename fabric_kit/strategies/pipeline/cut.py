"""Cutting a model into pipeline stages at named split points, as torchtitan does: every stage is the model itself
with the modules of the other stages removed (from a Sequential, ModuleList or ModuleDict, keeping the others'
names) or replaced by `nn.Identity` (an attribute the model's forward calls), so the model's own forward runs the
stage, parameter names stay those of the whole model (checkpoints load into any layout) and, on the meta device, a
rank never allocates another stage's weights.

The split points name modules in the order the forward runs them, e.g. `["blocks.2", "blocks.4"]` cuts a model
`embed -> blocks (6) -> norm -> head` into three stages: embed and blocks 0-1; blocks 2-3; blocks 4-5, norm, head.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence

from torch import nn
from torch.nn import Module

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _units(model: Module, split_points: Sequence[str]) -> tuple[list[str], set[str]]:
    """The modules a cut moves as a whole, in registration order: the children of the model and, recursively, of
    every module that holds a split point; and the set of those holding ones (the root is "")."""
    holders = {""} | {name.rsplit(".", i)[0] for name in split_points for i in range(1, name.count(".") + 1)}
    units: list[str] = []

    def walk(module: Module, prefix: str) -> None:
        direct = [name for name, _ in module.named_parameters(recurse=False)]
        if direct:
            raise ValueError(f"the pipeline cut must split {prefix or 'the model'!r}, which holds parameters of its "
                             f"own ({', '.join(direct)}) that belong to no stage; accepted: split points whose "
                             "parents hold only submodules (move such parameters into a submodule)")
        for name, child in module.named_children():
            qualified = f"{prefix}.{name}" if prefix else name
            if qualified in holders:
                walk(child, qualified)
            else:
                units.append(qualified)

    walk(model, "")
    return units, holders


def stage_ranges(model: Module, split_points: Sequence[str]) -> list[list[str]]:
    """The units (module names) of each stage, `len(split_points) + 1` stages; a split point that names no module,
    contains another, or comes out of the forward's order is a ValueError naming it and what is accepted."""
    names = dict(model.named_modules())
    for point in split_points:
        if not isinstance(point, str) or point not in names or point == "":
            candidates = [n for n in names if n and n.count(".") <= 1]
            raise ValueError(f"pipeline split point {point!r} names no module of {type(model).__name__}; accepted: "
                             f"names of its submodules, e.g. {', '.join(candidates[:12])}")
    units, holders = _units(model, split_points)
    nested = [point for point in split_points if point in holders]
    if nested:
        raise ValueError(f"pipeline split point {nested[0]!r} contains another split point; accepted: split points "
                         "none of which holds another")
    positions = [units.index(point) for point in split_points]
    if positions != sorted(set(positions)) or positions[0] == 0:
        raise ValueError(f"pipeline split points {list(split_points)} are not in the model's order after its first "
                         f"module; accepted: distinct names in the order of {units}, not the first")
    bounds = [0, *positions, len(units)]
    return [units[start:end] for start, end in zip(bounds, bounds[1:], strict=False)]


def cut_stages(model: Module, split_points: Sequence[str], stages: Sequence[int]) -> list[Module]:
    """Cut `model` in place down to the units of `stages` (this rank's stage indices) and return one module per
    stage: `model` itself when there is one, else copies of its containers down to the units, sharing the units (so
    parameters set up on a stage are those of `model`, which checkpoints and the optimizer see)."""
    ranges = stage_ranges(model, split_points)
    _, holders = _units(model, split_points)
    kept = {unit for index in stages for unit in ranges[index]}
    _drop(model, "", holders, kept)
    if len(stages) == 1:
        return [model]
    return [_shell(model, "", holders, set(ranges[index])) for index in stages]


def _drop(module: Module, prefix: str, holders: set[str], kept: set[str]) -> None:
    for name, child in list(module.named_children()):
        qualified = f"{prefix}.{name}" if prefix else name
        if qualified in holders:
            _drop(child, qualified, holders, kept)
        elif qualified not in kept:
            if isinstance(module, _CONTAINERS):
                del module._modules[name]  # the others keep their names (and so their checkpoint keys)
            else:
                setattr(module, name, nn.Identity())


def _shell(module: Module, prefix: str, holders: set[str], kept: set[str]) -> Module:
    """A copy of `module` whose own dicts (children, hooks) are new and whose units are shared, without the units
    outside `kept`."""
    shell = copy.copy(module)
    shell.__dict__.update({key: value.copy() for key, value in vars(module).items() if isinstance(value, dict)})
    for name, child in list(module.named_children()):
        qualified = f"{prefix}.{name}" if prefix else name
        if qualified in holders:
            shell._modules[name] = _shell(child, qualified, holders, kept)
        elif qualified not in kept:
            if isinstance(module, _CONTAINERS):
                del shell._modules[name]
            else:
                shell._modules[name] = nn.Identity()
    return shell
