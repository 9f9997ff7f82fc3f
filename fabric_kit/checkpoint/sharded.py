"""FSDP's sharded checkpoint format, in one place:

- the layout: a directory of torch.distributed.checkpoint (DCP) files holding every rank's shards of the models
  and optimizers, and one ordinary checkpoint file for everything else in the state;
- optimizer state keys: torch's own (`state[0]`, param groups listing indices), which a checkpoint for a plain
  model uses, and parameter names (`state["layer.weight"]`), which torch's state-dict API uses for sharded models;
- the state dicts of sharded models and optimizers, through that API: sharded (each rank its DTensor shards, for
  DCP) or full (plain tensors, complete on rank 0, for one file).

Reading DCP directories safely is `sharded_reading`'s, gathering one into a file `consolidate`'s."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.nn import Module
from torch.optim import Optimizer

from fabric_kit.checkpoint.state import Filter
from fabric_kit.wrappers import unwrap

# -- the layout ------------------------------------------------------------------------------------------------
PLAIN_ENTRIES = "fabric_kit_plain.pt"
"""The file inside the directory with the state's other entries (step counters, schedulers, RNG states)."""

DCP_METADATA = ".metadata"


def is_sharded_checkpoint(path: str | os.PathLike[str]) -> bool:
    path = Path(path)
    return path.is_dir() and (path / DCP_METADATA).is_file()


def needs_sharded_strategy(path: str | os.PathLike[str]) -> str:
    """What to tell a user who loads a directory where only a checkpoint file can be read."""
    if not is_sharded_checkpoint(path):
        return f"checkpoint {os.fspath(path)!r} is a directory, not a checkpoint file"
    return (f"checkpoint {os.fspath(path)!r} is a directory of shards written by a sharded strategy (FSDP, "
            "ModelParallelStrategy); load it with either, in any layout, or turn it into one file that any strategy "
            "and plain torch.load can read: "
            f"`fabric consolidate {os.fspath(path)} --output model.pt`")


# -- optimizer state keys ----------------------------------------------------------------------------------------
def by_index(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Name-keyed -> index-keyed, numbering parameters in param-group order as `torch.optim.Optimizer` does."""
    index: dict[Any, int] = {}
    for group in state_dict["param_groups"]:
        for name in group["params"]:
            index.setdefault(name, len(index))
    return {"state": {index[name]: value for name, value in state_dict["state"].items()},
            "param_groups": [{**group, "params": [index[name] for name in group["params"]]}
                             for group in state_dict["param_groups"]]}


def by_name(state_dict: dict[str, Any], names: list[list[str]]) -> dict[str, Any]:
    """Index-keyed -> name-keyed; `names[g]` are the parameter names of param group `g` in order. A state dict
    that is keyed by name already comes back unchanged."""
    groups = state_dict["param_groups"]
    if all(isinstance(p, str) for group in groups for p in group["params"]):
        return state_dict
    if [len(group["params"]) for group in groups] != [len(group) for group in names]:
        raise ValueError(f"the optimizer state has param groups of sizes {[len(g['params']) for g in groups]}, but "
                         f"the optimizer has {[len(g) for g in names]}: it was saved for a different model or "
                         "optimizer")
    name_of = {index: name for group, group_names in zip(groups, names, strict=True)
               for index, name in zip(group["params"], group_names, strict=True)}
    return {"state": {name_of[index]: value for index, value in state_dict["state"].items()},
            "param_groups": [{**group, "params": list(group_names)}
                             for group, group_names in zip(groups, names, strict=True)]}


# -- state dicts of sharded models and optimizers ---------------------------------------------------------------
class ShardedStateDict(dict[str, Any]):
    """A module's or optimizer's state dict in the sharded layout (this rank's DTensor shards, optimizer state keyed
    by parameter name): what DCP writes and reads. Restoring it needs no slicing; a plain dict holds full state."""


def split_state(state: dict[str, Any]) -> tuple[dict[str, Module], dict[str, Optimizer], dict[str, Any]]:
    """The state's modules, its optimizers, and everything else (which is checkpointed the ordinary way)."""
    modules, optimizers, rest = {}, {}, {}
    for key, obj in state.items():
        target = unwrap(obj)
        if isinstance(target, Module):
            modules[key] = target
        elif isinstance(target, Optimizer):
            optimizers[key] = target
        else:
            rest[key] = obj
    return modules, optimizers, rest


def owner(optimizer: Optimizer, modules: dict[str, Module], key: str) -> Module:
    """The module of the state whose parameters `optimizer` updates (the state-dict API names them through it)."""
    first = next(p for group in optimizer.param_groups for p in group["params"])
    for module in modules.values():
        if any(p is first for p in module.parameters()):
            return module
    raise ValueError(f"the optimizer under {key!r} updates parameters of no module in the state "
                     f"(modules: {sorted(modules)}); under FSDP its state is named through its model, so put the "
                     "model in the same state dict, e.g. {'model': model, 'optimizer': optimizer}")


def state_dicts(modules: dict[str, Module], optimizers: dict[str, Optimizer], full: bool,
                filter: Filter | None = None) -> dict[str, Any]:
    """Every module's and optimizer's state dict under its key. `full=True` gathers plain tensors onto rank 0's CPU
    (other ranks get empty dicts) with torch's index-keyed optimizer state, the format a single-process run saves;
    `full=False` gives each rank its shards, as `ShardedStateDict`s."""
    options = StateDictOptions(full_state_dict=full, cpu_offload=full)
    result: dict[str, Any] = {}
    for key, module in modules.items():
        result[key] = get_model_state_dict(module, options=options)
    for key, optimizer in optimizers.items():
        state = get_optimizer_state_dict(owner(optimizer, modules, key), optimizer, options=options)
        result[key] = by_index(state) if full and state else state
    for key, keep in (filter or {}).items():
        if key in result:
            result[key] = {k: v for k, v in result[key].items() if keep(k, v)}
    return result if full else {key: ShardedStateDict(value) for key, value in result.items()}


def load_state_dicts(modules: dict[str, Module], optimizers: dict[str, Optimizer], loaded: dict[str, Any],
                     strict: bool) -> None:
    """Load what `state_dicts` produced (or a single-process checkpoint) into the sharded objects: a
    `ShardedStateDict` as it is, full state sliced into this rank's shards."""
    for key, module in modules.items():
        if key in loaded:
            set_model_state_dict(module, loaded[key], options=_options(loaded[key], strict))
    for key, optimizer in optimizers.items():
        if key in loaded:
            model, state = owner(optimizer, modules, key), loaded[key]
            if not isinstance(state, ShardedStateDict):
                state = by_name(state, parameter_names(model, optimizer))
            set_optimizer_state_dict(model, optimizer, state, options=_options(loaded[key], strict))


def _options(state_dict: dict[str, Any], strict: bool) -> StateDictOptions:
    return StateDictOptions(full_state_dict=not isinstance(state_dict, ShardedStateDict), strict=strict)


def parameter_names(module: Module, optimizer: Optimizer) -> list[list[str]]:
    """The names of each param group's parameters, in order."""
    name_of = {id(p): name for name, p in module.named_parameters()}
    return [[name_of[id(p)] for p in group["params"]] for group in optimizer.param_groups]
