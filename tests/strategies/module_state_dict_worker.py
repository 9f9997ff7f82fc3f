"""The script behind test_module_state_dict.py: `Strategy.get_module_state_dict` / `load_module_state_dict` under
DDP, then FSDP, then DeepSpeed ZeRO stages 2 and 3 (when DeepSpeed is installed) in the same 2 CPU processes (each
later Fabric joins the group DDP's launch made), and FSDP's full checkpoint file written and read through a
CheckpointIO plugin.

    python module_state_dict_worker.py OUT_DIR

Rank r writes OUT_DIR/rank<r>.pt with what it observed.
"""
import importlib.util
import os
import sys

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from fabric_kit import Fabric
from fabric_kit.plugins.io import TorchCheckpointIO
from fabric_kit.strategies.fsdp import FSDPStrategy


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))

    def forward(self, x):
        return self.layers(x)


class CountingCheckpointIO(TorchCheckpointIO):
    """fabric_kit's file, with a count of the calls on this rank."""

    def __init__(self):
        self.calls = []

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        self.calls.append("save")
        super().save_checkpoint(checkpoint, path, storage_options)

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        self.calls.append("load")
        return super().load_checkpoint(path, map_location, weights_only)


def reference():
    torch.manual_seed(0)
    return Net().state_dict()


def replaced(state_dict):
    """Other values for every entry, the same on every rank."""
    return {key: torch.full_like(value, 0.25 + index) for index, (key, value) in enumerate(state_dict.items())}


def round_trip(fabric, model):
    """What get_module_state_dict gives, what it gives after loading other values, and the errors of strict and
    the effect of non-strict loading of a partial state dict."""
    strategy = fabric.strategy
    got = strategy.get_module_state_dict(model)
    result = {"keys": sorted(got), "equal": all(torch.equal(got[k].cpu(), v) for k, v in reference().items()),
              "plain": not any(isinstance(v, DTensor) for v in got.values())}
    new = replaced(reference())
    strategy.load_module_state_dict(model, new)
    after = strategy.get_module_state_dict(model)
    result["loaded"] = all(torch.equal(after[k].cpu(), v) for k, v in new.items())
    partial = {"layers.0.bias": torch.full((8,), -1.0)}
    try:
        strategy.load_module_state_dict(model, partial)
        result["strict_error"] = None
    except RuntimeError as error:
        result["strict_error"] = str(error)
    strategy.load_module_state_dict(model, partial, strict=False)
    after = strategy.get_module_state_dict(model)
    result["non_strict"] = (torch.equal(after["layers.0.bias"].cpu(), partial["layers.0.bias"])
                            and torch.equal(after["layers.2.weight"].cpu(), new["layers.2.weight"]))
    return result


def deepspeed_round_trip(stage):
    """The round trip under ZeRO `stage`, then a step with learning rate 0 after loading other values: the engine
    copies its fp32 master weights back into the module at every step, so the loaded values survive it only if
    loading refreshed those masters."""
    fabric = Fabric(accelerator="cpu", devices=2, strategy=f"deepspeed_stage_{stage}")
    fabric.launch()
    torch.manual_seed(0)
    model = Net()
    model, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.0))
    result = round_trip(fabric, model)
    new = replaced(reference())
    fabric.strategy.load_module_state_dict(model, new)
    fabric.backward(model(torch.ones(2, 4)).sum())
    optimizer.step()
    after = fabric.strategy.get_module_state_dict(model)
    result["kept_through_a_step"] = all(torch.equal(after[k].cpu(), v) for k, v in new.items())
    weight = model.module.layers[0].weight  # the engine's module: under stage 3 this rank holds a partition
    result["partition"] = weight.ds_tensor.numel() if hasattr(weight, "ds_tensor") else weight.numel()
    return result


def main(out_dir):
    fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp")
    fabric.launch()
    torch.manual_seed(0)
    result = {"ddp": round_trip(fabric, fabric.setup(Net()))}

    io = CountingCheckpointIO()
    fabric = Fabric(accelerator="cpu", devices=2, strategy=FSDPStrategy(state_dict_type="full"), plugins=[io])
    fabric.launch()
    torch.manual_seed(0)
    model = fabric.setup_module(Net())
    result["fsdp"] = round_trip(fabric, model)
    result["fsdp"]["sharded"] = tuple(model.layers[0].weight.to_local().shape)
    path = os.path.join(out_dir, "full.ckpt")
    fabric.save(path, {"model": model})
    expected = fabric.strategy.get_module_state_dict(model)
    fabric.strategy.load_module_state_dict(model, replaced(reference()))
    fabric.load(path, {"model": model})
    restored = fabric.strategy.get_module_state_dict(model)
    result["fsdp"]["checkpoint_io"] = (io.calls, all(torch.equal(restored[k], v) for k, v in expected.items()))
    if importlib.util.find_spec("deepspeed") is not None:
        for stage in (2, 3):
            result[f"deepspeed_stage_{stage}"] = deepspeed_round_trip(stage)
    torch.save(result, os.path.join(out_dir, f"rank{fabric.global_rank}.pt"))


if __name__ == "__main__":
    main(sys.argv[1])
