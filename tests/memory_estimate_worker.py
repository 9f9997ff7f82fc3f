"""A training script for test_memory_estimate.py: 2 CPU processes on gloo, one run per strategy covering the three
models of tests/helpers/memory_models.py.

    python memory_estimate_worker.py STRATEGY PRECISION OUT_DIR

This process becomes rank 0 and re-runs the command for rank 1. For each model, each rank sets it up with AdamW,
runs one forward, backward and optimizer step, and records the bytes of what it holds: its parameters, buffers,
gradients (before the step), master weights and optimizer states, counted from the rank's own tensors (DTensor
local shards under FSDP; DeepSpeed ZeRO-3's partitioned flat buffers). It saves them to OUT_DIR/rank<r>.pt.
"""
import os
import sys

import torch
from torch.distributed.tensor import DTensor

from fabric_kit import Fabric
from fabric_kit.wrappers import unwrap
from tests.helpers.memory_models import MODELS


def local_bytes(tensors):
    tensors = [t.to_local() if isinstance(t, DTensor) else t for t in tensors]
    return sum(t.numel() * t.element_size() for t in tensors)


def state_bytes(optimizer):
    """Every tensor of a torch optimizer's state: moments and `step` counters."""
    return local_bytes(v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor))


def held_by_torch(module, optimizer, gradients):
    return {"parameters": local_bytes(module.parameters()), "buffers": local_bytes(module.buffers()),
            "gradients": gradients, "master_weights": 0, "optimizer_states": state_bytes(optimizer)}


def held_by_zero3(module, zero, gradients):
    """ZeRO-3: the parameters' partitions live in one flat buffer per group, the float32 masters beside them unless
    the parameters are float32 already (then they share the storage), the optimizer's state on the masters."""
    masters = [m for m, p in zip(zero.fp32_partitioned_groups_flat, zero.fp16_partitioned_groups_flat, strict=True)
               if m.untyped_storage().data_ptr() != p.untyped_storage().data_ptr()]
    return {"parameters": local_bytes(zero.fp16_partitioned_groups_flat), "buffers": local_bytes(module.buffers()),
            "gradients": gradients, "master_weights": local_bytes(masters),
            "optimizer_states": state_bytes(zero.optimizer)}


def measure(fabric, factory, sample_input):
    torch.manual_seed(0)
    model = factory()
    model, optimizer = fabric.setup(model, torch.optim.AdamW(model.parameters(), lr=1e-3))
    output = model(sample_input())
    fabric.backward(output.float().pow(2).mean(), model=model)
    zero = unwrap(optimizer) if fabric.strategy.shards_parameters and fabric.strategy.owns_optimizer else None
    gradients = (local_bytes([zero.grad_partitions_flat_buffer]) if zero is not None
                 else local_bytes(p.grad for p in unwrap(model).parameters() if p.grad is not None))
    optimizer.step()
    if zero is not None:
        return held_by_zero3(unwrap(model), zero, gradients)
    return held_by_torch(unwrap(model), unwrap(optimizer), gradients)


def main(strategy, precision, out_dir):
    fabric = Fabric(accelerator="cpu", devices=2, strategy=strategy, precision=precision)
    fabric.launch()
    result = {name: measure(fabric, factory, sample_input) for name, (factory, sample_input) in MODELS.items()}
    torch.save(result, os.path.join(out_dir, f"rank{fabric.global_rank}.pt"))


if __name__ == "__main__":
    main(*sys.argv[1:])
