"""A stand-in for torch_xla, for testing what fabric_kit asks of it on hardware this machine lacks (a multi-device
TPU host). The fake records calls and answers like PJRT on a host with `devices` TPU chips; it computes nothing
on an XLA device. Tests using it prove which torch_xla entry points fabric_kit calls, with which arguments and
in which order — not that torch_xla or a TPU would then behave as assumed."""
import importlib.machinery
import sys
import types
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch


@dataclass
class FakeXLA:
    devices: int = 4
    ordinal: int = 0  # what the runtime reports for "this process" once launched
    rng_seed: int = 101  # the XLA device generator's state, as xm.get_rng_state() reports it
    calls: list = field(default_factory=list)
    modules: dict = field(default_factory=dict)

    def record(self, name: str, *args: Any, **kwargs: Any) -> None:
        self.calls.append((name, args, kwargs))

    def named(self, name: str) -> list:
        return [call for call in self.calls if call[0] == name]


class FakeShardedModule(torch.nn.Module):
    """Plays XlaFullyShardedDataParallel: keeps the module, marks its parameters as shards, records its kwargs."""

    def __init__(self, module: torch.nn.Module, **kwargs: Any) -> None:
        super().__init__()
        self.module = module
        self.kwargs = kwargs
        for param in module.parameters():
            param._is_sharded = True

    def forward(self, *args: Any) -> Any:
        return self.module(*args)

    def get_shard_metadata(self) -> dict:
        return {"world_size": 4}

    def clip_grad_norm_(self, max_norm: float, norm_type: float = 2.0) -> torch.Tensor:
        return torch.tensor(123.0)


def _module(name: str, **attributes: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    return module


@pytest.fixture
def fake_xla(monkeypatch, clean_env):
    """Install the fake as `torch_xla` (and the submodules fabric_kit imports) for the test's duration, even where
    the real torch_xla is installed and already imported."""
    fake = FakeXLA()

    def spawn(fn, args=(), nprocs=None, start_method="spawn"):
        # Runs the rank-0 process in this process; the real PJRT spawn starts one process per chip.
        fake.record("spawn", nprocs=nprocs, start_method=start_method)
        fn(0, *args)

    def all_reduce(reduce_type, inputs, **kwargs):
        fake.record("all_reduce", reduce_type)
        return inputs * fake.devices if reduce_type == "sum" else inputs  # as if every replica held `inputs`

    def all_gather(value, dim=0, **kwargs):
        fake.record("all_gather", tuple(value.shape))
        return torch.cat([value] * fake.devices, dim)

    def optimizer_step(optimizer, barrier=False, optimizer_args=None, **kwargs):
        fake.record("optimizer_step", optimizer, optimizer_args)
        return optimizer.step(**(optimizer_args or {}))

    def set_rng_state(seed, device=None):
        fake.record("set_rng_state", seed)
        fake.rng_seed = seed

    xm = _module("torch_xla.core.xla_model", all_reduce=all_reduce, all_gather=all_gather,
                 optimizer_step=optimizer_step, get_rng_state=lambda device=None: fake.rng_seed,
                 set_rng_state=set_rng_state,
                 broadcast_master_param=lambda module: fake.record("broadcast_master_param", module),
                 rendezvous=lambda tag, *a, **k: fake.record("rendezvous", tag),
                 collective_broadcast=lambda tensors, root_ordinal=0, **k: fake.record("collective_broadcast"))
    runtime = _module("torch_xla.runtime", device_type=lambda: "TPU", world_size=lambda: fake.devices,
                      global_ordinal=lambda: fake.ordinal, local_ordinal=lambda: fake.ordinal)
    tpu = _module("torch_xla._internal.tpu", num_available_devices=lambda: fake.devices)
    xmp = _module("torch_xla.distributed.xla_multiprocessing", spawn=spawn)
    fsdp = _module("torch_xla.distributed.fsdp", XlaFullyShardedDataParallel=FakeShardedModule)
    core = _module("torch_xla.core", xla_model=xm)
    internal = _module("torch_xla._internal", tpu=tpu)
    distributed = _module("torch_xla.distributed", xla_multiprocessing=xmp, fsdp=fsdp)
    root = _module("torch_xla", core=core, runtime=runtime, _internal=internal, distributed=distributed,
                   device=lambda index=None: torch.device("xla", 0), sync=lambda *a, **k: fake.record("sync"))
    for module in (root, core, xm, runtime, internal, tpu, distributed, xmp, fsdp):
        monkeypatch.setitem(sys.modules, module.__name__, module)
    root.__spec__ = importlib.machinery.ModuleSpec("torch_xla", None)  # what find_spec answers for an import
    return fake
