"""What every multi-process strategy shares: ranks from the cluster environment and torch.distributed collectives."""
from __future__ import annotations

import pickle
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from torch.nn import Module

from fabric_kit import distributed
from fabric_kit.accelerators import Accelerator
from fabric_kit.checkpoint.checkpoint_io import CheckpointIO
from fabric_kit.checkpoint.directory import (
    Records,
    atomic_directory,
    checksum,
    completed,
    file_sizes,
    share,
    staging_path,
    verify_directory,
)
from fabric_kit.checkpoint.errors import CheckpointWriteError
from fabric_kit.collective_log import LOG
from fabric_kit.environments import ClusterEnvironment
from fabric_kit.precision import Precision
from fabric_kit.strategies.launchers.multiprocessing import MultiprocessingLauncher
from fabric_kit.strategies.launchers.subprocess_script import SubprocessScriptLauncher
from fabric_kit.strategies.strategy import Strategy
from fabric_kit.watchdog import collective_timeout_seconds

StartMethod = Literal["popen", "spawn", "fork", "forkserver"]


class ParallelStrategy(Strategy):
    """`start_method` says how the ranks are started when no launcher (torchrun, SLURM, `fabric run`) did:
    "popen" re-runs the script for each rank, "spawn", "fork" and "forkserver" start them with
    torch.multiprocessing (`fabric.launch(fn)` then runs `fn` in each). `timeout` is the process group's own
    (torch's default when None); `collective_timeout` the seconds (or timedelta) after which the collective
    watchdog turns a wait in a collective into an error naming the ranks and operations (None: Fabric's setting,
    else 10 minutes; 0: no watchdog)."""

    def __init__(self, accelerator: Accelerator | None = None, parallel_devices: list[torch.device] | None = None,
                 cluster_environment: ClusterEnvironment | None = None, precision: Precision | None = None,
                 process_group_backend: str | None = None, timeout: timedelta | None = None,
                 start_method: StartMethod = "popen", *, collective_timeout: float | timedelta | None = None,
                 checkpoint_io: CheckpointIO | None = None) -> None:
        super().__init__(accelerator, precision, checkpoint_io)
        self.parallel_devices = parallel_devices or []
        self.cluster_environment = cluster_environment
        self.num_nodes = 1
        self.start_method = start_method
        collective_timeout_seconds(collective_timeout)  # a bad value fails here, naming the argument
        self.collective_timeout = collective_timeout
        self._process_group_backend = process_group_backend
        self._timeout = timeout

    def configure_launcher(self) -> None:
        """None where the environment started the processes; else the script re-run for each rank ("popen") or
        torch.multiprocessing's start method."""
        environment = self.cluster_environment
        if environment is None or environment.creates_processes_externally:
            self.launcher = None
        elif self.start_method == "popen":
            self.launcher = SubprocessScriptLauncher(environment, self.num_processes, self.num_nodes)
        else:
            self.launcher = MultiprocessingLauncher(environment, self.num_processes, self.start_method)

    @property
    def root_device(self) -> torch.device:
        if not self.parallel_devices:
            return torch.device("cpu")
        return self.parallel_devices[self.local_rank % len(self.parallel_devices)]

    @property
    def num_processes(self) -> int:
        return len(self.parallel_devices)

    @property
    def global_rank(self) -> int:
        return self.cluster_environment.global_rank() if self.cluster_environment else 0

    @property
    def local_rank(self) -> int:
        return self.cluster_environment.local_rank() if self.cluster_environment else 0

    @property
    def node_rank(self) -> int:
        return self.cluster_environment.node_rank() if self.cluster_environment else 0

    @property
    def world_size(self) -> int:
        return self.cluster_environment.world_size() if self.cluster_environment else 1

    @property
    def distributed_sampler_kwargs(self) -> dict[str, int] | None:
        """Every process is a data-parallel replica: the data-parallel rank and size are the global ones."""
        return {"num_replicas": self.world_size, "rank": self.global_rank}

    @property
    def process_group_backend(self) -> str:
        if self._process_group_backend:
            return self._process_group_backend
        return "nccl" if self.root_device.type == "cuda" else "gloo"

    def setup_environment(self) -> None:
        super().setup_environment()
        if self.cluster_environment is None:
            raise RuntimeError(f"{type(self).__name__} has no cluster environment: pass it to `Fabric(strategy=...)` "
                               "or let Fabric detect one")
        distributed.init_process_group(self.cluster_environment, self.process_group_backend, self._timeout,
                                       collective_timeout_seconds(self.collective_timeout))

    def backward(self, tensor: Tensor, module: Module | None, *args: Any, **kwargs: Any) -> None:
        """Recorded as collective "backward" for the watchdog: the gradient all-reduce of DDP (and FSDP's
        reduce-scatter) runs inside it."""
        seq = LOG.enter("backward")
        try:
            super().backward(tensor, module, *args, **kwargs)
        finally:
            LOG.left = seq

    def all_gather(self, tensor: Tensor, group: Any = None, sync_grads: bool = False) -> Tensor:
        if not distributed.is_initialized():
            return tensor
        return distributed.all_gather(tensor, group, sync_grads)

    def all_reduce(self, tensor: Tensor, group: Any = None, reduce_op: str | Any = "mean") -> Tensor:
        if not distributed.is_initialized():
            return tensor
        return distributed.all_reduce(tensor, reduce_op, group)

    def barrier(self, name: str | None = None) -> None:
        if distributed.is_initialized():
            distributed.barrier()

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        if not distributed.is_initialized():
            return obj
        return distributed.broadcast_object(obj, src)

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's picklable `obj` (small ones: RNG states), indexed by rank, sent as bytes through this
        strategy's own `all_gather`, so it works for every backend (on the strategy's device, as NCCL requires) and
        without a torch.distributed process group (XLA)."""
        if self.world_size == 1:
            return [obj]
        device = self.root_device
        data = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8)
        length = torch.tensor([data.numel()], dtype=torch.long, device=device)
        lengths = self.all_gather(length).reshape(-1).tolist()
        padded = torch.zeros(max(lengths), dtype=torch.uint8, device=device)
        padded[: data.numel()] = data.to(device)
        gathered = self.all_gather(padded).cpu()
        return [pickle.loads(gathered[rank, :size].numpy().tobytes()) for rank, size in enumerate(lengths)]

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        votes = self.all_reduce(torch.tensor(int(decision), device=self.root_device), reduce_op="sum")
        return bool(votes == self.world_size) if all else bool(votes > 0)

    @contextmanager
    def checkpoint_directory(self, path: str, known: Records | None = None) -> Iterator[Path]:
        """A directory checkpoint every rank writes into: rank 0 stages it atomically, all ranks write into the
        staging path, and rank 0 writes the manifest of every file and swaps the directory in.

        The manifest's records: with `known`, a dict that the block fills on rank 0 with the records of the files
        it wrote, checksummed while they were written (DCP's writer here gathers every rank's), those files are
        not read again and rank 0 checksums any others; without it, each rank fsyncs and checksums its `share` of
        the files, and rank 0 gathers the records.

        Each step ends with the ranks agreeing that it succeeded everywhere (a collective, in place of a barrier):
        when any rank's step failed, every rank raises (that rank its own error, the others a
        `CheckpointWriteError` saying so), so no rank waits forever for one that gave up, and the staging directory
        is removed, leaving the previous checkpoint as it was."""
        stack = ExitStack()
        records: Records = {}
        with self._on_every_rank(path, "staging the directory"):
            if self.is_global_zero:
                stack.enter_context(atomic_directory(path, records=lambda _: records))
        staging = staging_path(path)
        with self._on_every_rank(path, "swapping the directory in"), stack:
            with self._on_every_rank(path, "writing its part"):
                yield staging
            if known is not None:
                if self.is_global_zero:
                    records.update(completed(staging, known))
                return
            sizes: dict[str, int] = {}
            with self._on_every_rank(path, "listing the files"):
                if self.is_global_zero:
                    sizes = file_sizes(staging)
            sizes = self.broadcast(sizes)
            with self._on_every_rank(path, "checksumming its share of the files"):
                mine = checksum(staging, share(sizes, self.global_rank, self.world_size), fsync=True)
            for part in self.all_gather_object(mine):
                records.update(part)

    def verify_checkpoint_directory(self, path: str) -> None:
        """`verify_directory` split over the ranks: each checks that every file is there with its size, and the
        contents of its share of the files; every rank raises the first failure of any rank (its own first). An
        intact checkpoint costs one small all-reduce; the failures are gathered only when there is one."""
        failure: Exception | None = None
        try:
            verify_directory(path, self.global_rank, self.world_size)
        except Exception as error:
            failure = error
        if self.reduce_boolean_decision(failure is None):
            return
        failures = [f for f in self.all_gather_object(failure) if f is not None]  # every rank takes part
        raise failure or failures[0]

    @contextmanager
    def _on_every_rank(self, path: str, step: str) -> Iterator[None]:
        try:
            yield
        except Exception:
            self.reduce_boolean_decision(False)
            raise
        if not self.reduce_boolean_decision(True):
            raise CheckpointWriteError(path, f"another rank failed while {step} (its own error says why); nothing "
                                             "was swapped in, the previous checkpoint there, if any, is unchanged")

    def teardown(self) -> None:
        distributed.destroy_process_group()
        super().teardown()
