"""`trainer.strategy`: the collectives a LightningModule or callback may call, as a thin facade over fabric."""
from __future__ import annotations

from typing import Any

import torch


class StrategyFacade:
    def __init__(self, fabric: Any) -> None:
        self._fabric = fabric

    @property
    def root_device(self) -> torch.device:
        return self._fabric.device

    @property
    def world_size(self) -> int:
        return self._fabric.world_size

    @property
    def global_rank(self) -> int:
        return self._fabric.global_rank

    @property
    def local_rank(self) -> int:
        return self._fabric.local_rank

    @property
    def node_rank(self) -> int:
        return self._fabric.node_rank

    @property
    def is_global_zero(self) -> bool:
        return self._fabric.is_global_zero

    def barrier(self, name: str | None = None) -> None:
        self._fabric.barrier(name)

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return self._fabric.broadcast(obj, src)

    def all_gather(self, data: Any, group: Any = None, sync_grads: bool = False) -> Any:
        return self._fabric.all_gather(data, group=group, sync_grads=sync_grads)

    def reduce(self, data: Any, group: Any = None, reduce_op: str = "mean") -> Any:
        return self._fabric.all_reduce(data, group=group, reduce_op=reduce_op)

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        """True on every process when all (or, with `all=False`, any) processes decided True."""
        if self._fabric.world_size == 1:
            return decision
        total = self._fabric.all_reduce(torch.tensor(int(decision), device=self._fabric.device), reduce_op="sum")
        return bool(total == self._fabric.world_size) if all else bool(total > 0)

    def __repr__(self) -> str:
        return f"StrategyFacade({type(self._fabric.strategy).__name__}, world_size={self.world_size})"
