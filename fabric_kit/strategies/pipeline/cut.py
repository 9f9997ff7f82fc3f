"""Cutting a model into pipeline stages at named split points, as torchtitan does: every stage is the model itself
with the modules of the other stages removed (from a Sequential, ModuleList or ModuleDict, keeping the others'
names) or replaced by `nn.Identity` (an attribute the model's forward calls), so the model's own forward runs the
stage, parameter names stay those of the whole model (checkpoints load into any layout) and, on the meta device, a
rank never allocates another stage's weights.

The split points name modules in the order the forward runs them, e.g. `["blocks.2", "blocks.4"]` cuts a model
`embed -> blocks (6) -> norm -> head` into three stages: embed and blocks 0-1; blocks 2-3; blocks 4-5, norm, head.

A model whose forward is not one chain of its modules is cut by a function instead, `split(model, pipeline_size)`
returning the stage modules, built from the model's own modules (`stages_of`); the model then keeps only the
modules of this rank's stages, so its parameter names stay the whole model's there too.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

from torch import nn
from torch.nn import Module

from fabric_kit.strategies.pipeline.schedule import check_schedule

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)

StageSplit = Sequence[str] | Callable[[Module, int], Sequence[Module]]
"""Where a model is cut: split-point names, or a function `(model, pipeline_size) -> stages`."""


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


def rank_stages(model: Module, split: StageSplit, schedule: str, pipeline_size: int, rank: int
                ) -> tuple[list[Module], list[int], int]:
    """This pipeline rank's stages of `model` (cut in place down to them), their indices and the number of stages:
    rank r runs stages r, r + pipeline_size, ... (several only under "interleaved_1f1b")."""
    def mine(count: int) -> list[int]:
        return [rank + k * pipeline_size for k in range(check_schedule(schedule, count, pipeline_size))]

    if not callable(split):
        indices = mine(len(split) + 1)
        return cut_stages(model, split, indices), indices, len(split) + 1
    every = stages_of(model, split, pipeline_size)
    indices = mine(len(every))
    stages = [every[index] for index in indices]
    keep_only(model, stages)
    return stages, indices, len(every)


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


def stages_of(model: Module, split: Callable[[Module, int], Sequence[Module]], pipeline_size: int) -> list[Module]:
    """The stages `split(model, pipeline_size)` returns: a list of modules made of `model`'s own, every parameter of
    `model` in exactly one of them; anything else is a TypeError / ValueError naming the value and what is
    accepted."""
    name = f"pipeline_split function {getattr(split, '__name__', split)!r}"
    stages = split(model, pipeline_size)
    if not isinstance(stages, (list, tuple, nn.ModuleList)):
        raise TypeError(f"{name} returned a {type(stages).__name__}; accepted: a list of the stage modules, in the "
                        "forward's order (each built from the model's own modules)")
    for index, stage in enumerate(stages):
        if not isinstance(stage, Module):
            raise TypeError(f"{name} returned stage {index} as a {type(stage).__name__} ({stage!r:.80}); accepted: "
                            "an nn.Module per stage")
    owner = {id(p): qualified for qualified, p in model.named_parameters()}
    stage_of: dict[int, int] = {}
    for index, stage in enumerate(stages):
        for local, p in stage.named_parameters():
            if id(p) not in owner:
                raise ValueError(f"{name}: stage {index}'s parameter {local!r} is not one of the model's; accepted: "
                                 "stages built from the model's own modules (e.g. `nn.Sequential(model.embed, "
                                 "*model.blocks[:2])`), not copies")
            if stage_of.setdefault(id(p), index) != index:
                raise ValueError(f"{name}: parameter {owner[id(p)]!r} is in stages {stage_of[id(p)]} and {index}; "
                                 "accepted: each parameter in exactly one stage")
    missing = [qualified for key, qualified in owner.items() if key not in stage_of]
    if missing:
        raise ValueError(f"{name}: the model's parameter(s) {', '.join(missing[:6])} are in no stage; accepted: "
                         "stages that together hold every parameter of the model")
    return list(stages)


def keep_only(model: Module, stages: Sequence[Module]) -> None:
    """Remove from `model`, in place, the modules and parameters that none of `stages` holds, so that it keeps this
    rank's stages under the whole model's names (the stages' own forwards run; the model's is not called)."""
    kept = {id(t) for stage in stages for t in (*stage.parameters(), *stage.buffers())}

    def prune(module: Module) -> None:
        for name, child in list(module.named_children()):
            held = {id(t) for t in (*child.parameters(), *child.buffers())}
            if held.isdisjoint(kept) and held:
                delattr(module, name)
            elif not held <= kept:
                prune(child)
        for name, p in list(module.named_parameters(recurse=False)):
            if id(p) not in kept:
                delattr(module, name)

    prune(model)
