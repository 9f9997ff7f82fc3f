"""Collectives over a process group of one's own, Lightning's `lightning.fabric.plugins.collectives` interface: a
`Collective` owns a group (`create_group(ranks=...)`, or the default one) and runs torch.distributed's operations on
it with torch's signatures, in place, returning the result. For code written against Lightning's plugin, and for
work outside Fabric's own collectives (`fabric.all_reduce` & co. reduce over every rank and copy their input).

    collective = TorchCollective().setup(backend="gloo", world_size=2, rank=rank)  # joins the default group
    collective.create_group(ranks=[0, 1])
    collective.all_reduce(tensor, op="sum")
    collective.teardown()

`SingleDeviceCollective` is the one-process stand-in: every operation returns its input."""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from fabric_kit.distributed import ReduceOp

__all__ = ["Collective", "SingleDeviceCollective", "TorchCollective"]


class Collective(ABC):
    """Collective operations over the group this object owns (`create_group`), or that its class provides."""

    def __init__(self) -> None:
        self._group: Any = None

    @property
    @abstractmethod
    def rank(self) -> int:
        """This process's rank in the group."""

    @property
    @abstractmethod
    def world_size(self) -> int:
        """The number of processes in the group."""

    @property
    def group(self) -> Any:
        if self._group is None:
            raise RuntimeError(f"{type(self).__name__} owns no group; create one with `collective.create_group()`")
        return self._group

    @abstractmethod
    def broadcast(self, tensor: Tensor, src: int) -> Tensor: ...

    @abstractmethod
    def all_reduce(self, tensor: Tensor, op: str = "sum") -> Tensor: ...

    @abstractmethod
    def reduce(self, tensor: Tensor, dst: int, op: str = "sum") -> Tensor: ...

    @abstractmethod
    def all_gather(self, tensor_list: list[Tensor], tensor: Tensor) -> list[Tensor]: ...

    @abstractmethod
    def gather(self, tensor: Tensor, gather_list: list[Tensor], dst: int = 0) -> list[Tensor]: ...

    @abstractmethod
    def scatter(self, tensor: Tensor, scatter_list: list[Tensor], src: int = 0) -> Tensor: ...

    @abstractmethod
    def reduce_scatter(self, output: Tensor, input_list: list[Tensor], op: str = "sum") -> Tensor: ...

    @abstractmethod
    def all_to_all(self, output_tensor_list: list[Tensor], input_tensor_list: list[Tensor]) -> list[Tensor]: ...

    @abstractmethod
    def send(self, tensor: Tensor, dst: int, tag: int = 0) -> None: ...

    @abstractmethod
    def recv(self, tensor: Tensor, src: int | None = None, tag: int = 0) -> Tensor: ...

    @abstractmethod
    def barrier(self, device_ids: list[int] | None = None) -> None: ...

    @classmethod
    @abstractmethod
    def is_available(cls) -> bool: ...

    @classmethod
    @abstractmethod
    def is_initialized(cls) -> bool: ...

    @classmethod
    @abstractmethod
    def init_group(cls, **kwargs: Any) -> None:
        """Join the default group (`torch.distributed.init_process_group(**kwargs)` for torch)."""

    @classmethod
    @abstractmethod
    def new_group(cls, **kwargs: Any) -> Any:
        """A new group of the default group's processes (`torch.distributed.new_group(**kwargs)` for torch)."""

    @classmethod
    @abstractmethod
    def destroy_group(cls, group: Any) -> None: ...

    def setup(self, **kwargs: Any) -> Collective:
        """Join the default group with `kwargs` unless this process is in one already."""
        if not self.is_initialized():
            self.init_group(**kwargs)
        return self

    def create_group(self, **kwargs: Any) -> Collective:
        """Own a new group (`new_group(**kwargs)`); one at a time."""
        if self._group is not None:
            raise RuntimeError(f"{type(self).__name__} owns a group already; `teardown()` it first")
        self._group = self.new_group(**kwargs)
        return self

    def teardown(self) -> Collective:
        """Destroy the group this object owns."""
        if self._group is None:
            raise RuntimeError(f"{type(self).__name__} owns no group to destroy")
        self.destroy_group(self._group)
        self._group = None
        return self


class TorchCollective(Collective):
    """torch.distributed's operations on the owned group, or on the default group (torch's WORLD) when none was
    created. Reductions take `op` as a name of a `torch.distributed.ReduceOp` member in any case ("sum", "max",
    "avg" where the backend has it, ...) or the member itself.

    `setup(main_address=..., main_port=..., **init_kwargs)` joins the default group, exporting MASTER_ADDR /
    MASTER_PORT for the time of the call where they are not set; a default group this class created is destroyed
    by the `teardown()` that destroys the last other group."""

    manages_default_group = False
    """Whether a `setup` of this class created the default group (so a `teardown` may destroy it)."""
    _groups_created = 0  # groups created by `create_group` and not yet torn down, over all instances

    def __init__(self) -> None:
        if not dist.is_available():
            raise RuntimeError("TorchCollective needs torch.distributed, which this build of torch does not have")
        super().__init__()

    @property
    def group(self) -> Any:
        if self._group is None:
            self._group = dist.GroupMember.WORLD
        return super().group

    @property
    def rank(self) -> int:
        return dist.get_rank(self.group)

    @property
    def world_size(self) -> int:
        return dist.get_world_size(self.group)

    def broadcast(self, tensor: Tensor, src: int) -> Tensor:
        dist.broadcast(tensor, src, group=self.group)
        return tensor

    def all_reduce(self, tensor: Tensor, op: str | ReduceOp = "sum") -> Tensor:
        dist.all_reduce(tensor, op=native_op(op), group=self.group)
        return tensor

    def reduce(self, tensor: Tensor, dst: int, op: str | ReduceOp = "sum") -> Tensor:
        dist.reduce(tensor, dst, op=native_op(op), group=self.group)
        return tensor

    def all_gather(self, tensor_list: list[Tensor], tensor: Tensor) -> list[Tensor]:
        dist.all_gather(tensor_list, tensor, group=self.group)
        return tensor_list

    def gather(self, tensor: Tensor, gather_list: list[Tensor], dst: int = 0) -> list[Tensor]:
        dist.gather(tensor, gather_list if self.rank == dst else None, dst, group=self.group)
        return gather_list

    def scatter(self, tensor: Tensor, scatter_list: list[Tensor], src: int = 0) -> Tensor:
        dist.scatter(tensor, scatter_list if self.rank == src else None, src, group=self.group)
        return tensor

    def reduce_scatter(self, output: Tensor, input_list: list[Tensor], op: str | ReduceOp = "sum") -> Tensor:
        dist.reduce_scatter(output, input_list, op=native_op(op), group=self.group)
        return output

    def all_to_all(self, output_tensor_list: list[Tensor], input_tensor_list: list[Tensor]) -> list[Tensor]:
        dist.all_to_all(output_tensor_list, input_tensor_list, group=self.group)
        return output_tensor_list

    def send(self, tensor: Tensor, dst: int, tag: int = 0) -> None:
        dist.send(tensor, dst, group=self.group, tag=tag)

    def recv(self, tensor: Tensor, src: int | None = None, tag: int = 0) -> Tensor:
        dist.recv(tensor, src, group=self.group, tag=tag)
        return tensor

    def all_gather_object(self, object_list: list[Any], obj: Any) -> list[Any]:
        dist.all_gather_object(object_list, obj, group=self.group)
        return object_list

    def broadcast_object_list(self, object_list: list[Any], src: int, device: torch.device | None = None
                              ) -> list[Any]:
        dist.broadcast_object_list(object_list, src, group=self.group, device=device)
        return object_list

    def gather_object(self, obj: Any, object_gather_list: list[Any], dst: int = 0) -> list[Any]:
        dist.gather_object(obj, object_gather_list if self.rank == dst else None, dst, group=self.group)
        return object_gather_list

    def scatter_object_list(self, scatter_object_output_list: list[Any], scatter_object_input_list: list[Any],
                            src: int = 0) -> list[Any]:
        dist.scatter_object_list(scatter_object_output_list,
                                 scatter_object_input_list if self.rank == src else None, src, group=self.group)
        return scatter_object_output_list

    def barrier(self, device_ids: list[int] | None = None) -> None:
        if self.group == dist.GroupMember.NON_GROUP_MEMBER:
            return
        dist.barrier(group=self.group, device_ids=device_ids)

    def monitored_barrier(self, timeout: timedelta | None = None, wait_all_ranks: bool = False) -> None:
        """A barrier that names the ranks that did not arrive within `timeout` (gloo only)."""
        dist.monitored_barrier(group=self.group, timeout=timeout, wait_all_ranks=wait_all_ranks)

    def setup(self, main_address: str | None = None, main_port: str | int | None = None,
              **kwargs: Any) -> TorchCollective:
        if self.is_initialized():
            return self
        exported = []
        for name, value in (("MASTER_ADDR", main_address), ("MASTER_PORT", main_port)):
            if value is not None and name not in os.environ:
                os.environ[name] = str(value)
                exported.append(name)
        try:
            super().setup(**kwargs)
        finally:
            for name in exported:
                os.environ.pop(name, None)
        TorchCollective.manages_default_group = True
        return self

    def create_group(self, **kwargs: Any) -> TorchCollective:
        super().create_group(**kwargs)
        TorchCollective._groups_created += 1
        return self

    def teardown(self) -> TorchCollective:
        """Destroy the owned group (the default group where none was created); then, if `setup` created the default
        group and no group created by `create_group` is left, destroy the default group too (on its members)."""
        created = self._group is not None and self._group is not dist.GroupMember.WORLD
        member = self.group != dist.GroupMember.NON_GROUP_MEMBER
        super().teardown()
        if created:
            TorchCollective._groups_created -= 1
        world = dist.GroupMember.WORLD
        if TorchCollective.manages_default_group and (world is None or (member and not self._groups_created)):
            if world is not None:
                self.destroy_group(world)
            TorchCollective.manages_default_group = False
        return self

    @classmethod
    def is_available(cls) -> bool:
        return dist.is_available()

    @classmethod
    def is_initialized(cls) -> bool:
        return cls.is_available() and dist.is_initialized()

    @classmethod
    def init_group(cls, **kwargs: Any) -> None:
        dist.init_process_group(**kwargs)

    @classmethod
    def new_group(cls, **kwargs: Any) -> Any:
        return dist.new_group(**kwargs)

    @classmethod
    def destroy_group(cls, group: Any) -> None:
        """Destroy `group`; a process outside it (its `new_group` gave it a placeholder) has nothing to do."""
        if group is not None and group != dist.GroupMember.NON_GROUP_MEMBER and dist.is_initialized():
            dist.destroy_process_group(group)


class SingleDeviceCollective(Collective):
    """One process: every operation returns its input (the gathers a list of it), nothing is sent."""

    @property
    def rank(self) -> int:
        return 0

    @property
    def world_size(self) -> int:
        return 1

    def broadcast(self, tensor: Tensor, src: int = 0) -> Tensor:
        return tensor

    def all_reduce(self, tensor: Tensor, op: str = "sum") -> Tensor:
        return tensor

    def reduce(self, tensor: Tensor, dst: int = 0, op: str = "sum") -> Tensor:
        return tensor

    def all_gather(self, tensor_list: list[Tensor], tensor: Tensor) -> list[Tensor]:
        return [tensor]

    def gather(self, tensor: Tensor, gather_list: list[Tensor], dst: int = 0) -> list[Tensor]:
        return [tensor]

    def scatter(self, tensor: Tensor, scatter_list: list[Tensor], src: int = 0) -> Tensor:
        return scatter_list[0]

    def reduce_scatter(self, output: Tensor, input_list: list[Tensor], op: str = "sum") -> Tensor:
        return input_list[0]

    def all_to_all(self, output_tensor_list: list[Tensor], input_tensor_list: list[Tensor]) -> list[Tensor]:
        return input_tensor_list

    def send(self, tensor: Tensor, dst: int, tag: int = 0) -> None:
        return None

    def recv(self, tensor: Tensor, src: int | None = None, tag: int = 0) -> Tensor:
        return tensor

    def barrier(self, device_ids: list[int] | None = None) -> None:
        return None

    @classmethod
    def is_available(cls) -> bool:
        return True

    @classmethod
    def is_initialized(cls) -> bool:
        return True

    @classmethod
    def init_group(cls, **kwargs: Any) -> None:
        return None

    @classmethod
    def new_group(cls, **kwargs: Any) -> Any:
        return object()  # a token: there is nothing to communicate with

    @classmethod
    def destroy_group(cls, group: Any) -> None:
        return None


def native_op(op: str | ReduceOp) -> ReduceOp:
    """A `torch.distributed.ReduceOp` from its member's name in any case ("sum", "MAX", "avg", ...) or itself."""
    if not isinstance(op, str):
        return op
    found = getattr(dist.ReduceOp, op.upper(), None)
    if found is None or not isinstance(found, dist.ReduceOp.RedOpType):
        members = sorted(name.lower() for name in dist.ReduceOp.RedOpType.__members__)
        raise ValueError(f"op={op!r} is not a torch.distributed.ReduceOp; accepted: {', '.join(members)}")
    result: ReduceOp = found
    return result
