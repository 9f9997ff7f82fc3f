"""Optimizer state dicts come keyed two ways: torch's own (`state[0]`, param_groups listing indices) and by parameter
name (`state["layer.weight"]`, as torch.distributed.checkpoint's state-dict API returns them for sharded models). A
checkpoint meant for a plain model uses indices; a sharded model needs names. These convert one into the other."""
from __future__ import annotations

from typing import Any


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
    name_of = {index: name for group, group_names in zip(groups, names)
               for index, name in zip(group["params"], group_names)}
    return {"state": {name_of[index]: value for index, value in state_dict["state"].items()},
            "param_groups": [{**group, "params": list(group_names)} for group, group_names in zip(groups, names)]}
