"""Turning the user's `state` dict into something storable, and pouring a loaded checkpoint back into it."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.optim import Optimizer

from fabric_kit.wrappers import unwrap

RESERVED_KEY = "__fabric_kit__"
"""The checkpoint entry where fabric_kit keeps its own state: `{"rng": {rank: states}, "precision": ...}`."""


def stateful(obj: Any) -> Any:
    """The object whose `state_dict` stands for `obj` in a checkpoint: a wrapper that has state of its own (the
    dataloader wrapper keeps the position its DataLoader lacks), else the user's object behind the wrapper."""
    own = getattr(type(obj), "state_dict", None)
    return obj if callable(own) and hasattr(obj, "_fabric_kit_unwrapped") else unwrap(obj)


Filter = dict[str, Callable[[str, Any], bool]]
"""Per entry of a state, which items of its state dict to save: `{"model": lambda name, value: ...}`."""


def check_state(state: Any, filter: Filter | None = None) -> None:
    """Refuse a state that `Fabric.save` cannot store: not a dict, one using `RESERVED_KEY`, or a filter naming
    entries the state does not have."""
    if not isinstance(state, dict):
        raise TypeError(f"the state to save must be a dict of named entries, e.g. {{'model': model, 'optimizer': "
                        f"optimizer, 'step': step}}; got {type(state).__name__}")
    if RESERVED_KEY in state:
        raise ValueError(f"the state uses the key {RESERVED_KEY!r}, which fabric_kit reserves for RNG and precision "
                         "state; rename that entry")
    unknown = set(filter or {}) - set(state)
    if unknown:
        raise ValueError(f"filter has keys {sorted(unknown)} that are not in the state: {sorted(state)}")


def to_storable(state: dict[str, Any], filter: Filter | None = None) -> dict[str, Any]:
    """Replace every object that has a `state_dict()` by that state dict; `filter` picks entries per key of the
    dicts this gives (a filter on an entry that is not a dict, e.g. a number, keeps it whole, as in Lightning)."""
    filter = filter or {}
    converted = {}
    for key, obj in state.items():
        value = stateful(obj)
        if hasattr(value, "state_dict") and callable(value.state_dict):
            value = value.state_dict()
        if key in filter and isinstance(value, dict):
            keep = filter[key]
            value = {k: v for k, v in value.items() if keep(k, v)}
        converted[key] = value
    return converted


def restore_into(state: dict[str, Any], checkpoint: dict[str, Any], strict: bool = True) -> dict[str, Any]:
    """Load `checkpoint` into the objects of `state` in place; return the checkpoint entries `state` did not ask for.

    Plain values in `state` (numbers, tensors, dicts) are replaced by the checkpoint's; objects with
    `load_state_dict` restore themselves. With `strict`, a key of `state` missing from the checkpoint is an error.
    """
    missing = [key for key in state if key not in checkpoint]
    if missing and strict:
        raise KeyError(f"the checkpoint has no entry for {missing}; it holds {sorted(checkpoint)}. "
                       "Pass strict=False to load the rest.")
    for key, obj in state.items():
        if key not in checkpoint:
            continue
        target = stateful(obj)
        value = checkpoint[key]
        if isinstance(target, torch.nn.Module):
            target.load_state_dict(value, strict=strict)
        elif isinstance(target, Optimizer) or hasattr(target, "load_state_dict"):
            target.load_state_dict(value)
        else:
            state[key] = value
    return {key: value for key, value in checkpoint.items() if key not in state}
