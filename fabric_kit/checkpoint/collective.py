"""Gathering small picklable objects (RNG states) from every rank with only the strategy's tensor collectives, so
it works for any strategy and backend (the byte tensors live on the strategy's device, as NCCL requires)."""
from __future__ import annotations

import pickle
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from fabric_kit.strategies.strategy import Strategy


def all_gather_object(strategy: Strategy, obj: Any) -> list[Any]:
    """Every rank's `obj`, indexed by rank; one process needs no collective."""
    if strategy.world_size == 1:
        return [obj]
    device = strategy.root_device
    data = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8)
    length = torch.tensor([data.numel()], dtype=torch.long, device=device)
    lengths = strategy.all_gather(length).reshape(-1).tolist()
    padded = torch.zeros(max(lengths), dtype=torch.uint8, device=device)
    padded[: data.numel()] = data.to(device)
    gathered = strategy.all_gather(padded).cpu()
    return [pickle.loads(gathered[rank, :size].numpy().tobytes()) for rank, size in enumerate(lengths)]
