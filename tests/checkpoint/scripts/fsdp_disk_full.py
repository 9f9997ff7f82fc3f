"""Two FSDP ranks (gloo) save a sharded checkpoint that fits on a small disk, then one that does not, into the same
path, then one whose file of plain entries fails on rank 0 alone (rank 1 wrote its shards and would wait for rank 0
at the end of the save); each rank records the errors it got, what the disk holds afterwards, and whether the first
checkpoint still loads.

    python fsdp_disk_full.py DISK OUT_DIR
"""
import errno
import importlib
import os
import sys

import torch
from torch import nn

from fabric_kit import Fabric
from fabric_kit.strategies.fsdp import FSDPStrategy


def sharded(fabric, width):
    torch.manual_seed(width)
    model = fabric.setup_module(nn.Linear(width, width))
    return model, fabric.setup_optimizers(torch.optim.SGD(model.parameters(), lr=0.1))


def _fails(obj, path):
    raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))


def main(disk, out):
    fabric = Fabric(accelerator="cpu", devices=2, strategy=FSDPStrategy(state_dict_type="sharded"))
    fabric.launch()
    path = os.path.join(disk, "checkpoint")
    small, optimizer = sharded(fabric, 8)
    fabric.save(path, {"model": small, "optimizer": optimizer, "step": 1})
    saved = small.weight.to_local().clone()

    big, _ = sharded(fabric, 800)  # 2.5 MB of weights on a 512 kB disk
    result = {}
    try:
        fabric.save(path, {"model": big, "step": 2})
    except Exception as error:  # noqa: BLE001 - the test asserts on type and message
        result["error_type"] = type(error).__name__
        result["error"] = str(error)
    fabric.barrier()
    if fabric.global_rank == 0:
        # the writer of the directory's file of plain entries (imported by name: after FSDP's, as the package does)
        importlib.import_module("fabric_kit.strategies.sharded").save_new_file = _fails
    try:
        fabric.save(path, {"model": small, "step": 3})
    except Exception as error:  # noqa: BLE001
        result["one_rank_error_type"] = type(error).__name__
        result["one_rank_error"] = str(error)
    fabric.barrier()
    result["disk"] = sorted(os.listdir(disk))

    restored, optimizer = sharded(fabric, 8)
    state = {"model": restored, "optimizer": optimizer, "step": 0}
    fabric.load(path, state)
    result["step"] = state["step"]
    result["weights_restored"] = torch.equal(restored.weight.to_local(), saved)
    torch.save(result, os.path.join(out, f"rank{fabric.global_rank}.pt"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
