"""The FSDP script behind test_sharded_reading.py (2 CPU processes, gloo): every scenario in the same two processes.

    python sharded_reading_worker.py OUT_DIR

Rank 0 trains a little, saves OUT_DIR/intact (a sharded directory), and crafts two copies that run code when
unpickled: OUT_DIR/crafted_metadata (in `.metadata`) and OUT_DIR/crafted_entry (in an optimizer entry inside a
shard), each creating OUT_DIR/marker_<name> if it ever runs. Both ranks then load each with default arguments into
freshly set up objects, and the intact one with defaults and with weights_only=False. Each rank saves what it
observed to OUT_DIR/rank<r>.pt.
"""
import os
import sys

import torch

from fabric_kit import Fabric
from fabric_kit.strategies.fsdp import FSDPStrategy
from tests.helpers.crafted import crafted_entry, crafted_metadata
from tests.strategies.fsdp_worker import Block, batches, full_weights, model_and_optimizer, train

CRAFTED = {"crafted_metadata": crafted_metadata, "crafted_entry": crafted_entry}


def fresh(fabric):
    torch.manual_seed(1)  # other weights than the saved run: what matches came from the checkpoint
    model, optimizer = model_and_optimizer(fabric)
    return {"model": model, "optimizer": optimizer, "step": 0}


def attempt(fabric, path, **options):
    """Load `path` into fresh objects: the error's type and message, or the loaded weights and step."""
    state = fresh(fabric)
    try:
        fabric.load(path, state, **options)
    except Exception as error:  # noqa: BLE001 - the test asserts on what was raised
        return {"error": type(error).__name__, "message": str(error), "path": getattr(error, "path", None)}
    finally:
        fabric.barrier()
    return {"weights": full_weights(state["model"]), "step": state["step"],
            "lr": state["optimizer"].param_groups[0]["lr"]}


def main(out):
    fabric = Fabric(accelerator="cpu", devices=2, strategy=FSDPStrategy(auto_wrap_policy={Block}))
    fabric.launch()
    torch.manual_seed(0)
    model, optimizer = model_and_optimizer(fabric)
    train(fabric, model, optimizer, batches(2))
    intact = os.path.join(out, "intact")
    fabric.save(intact, {"model": model, "optimizer": optimizer, "step": 2})
    result = {"saved": full_weights(model)}
    if fabric.is_global_zero:
        for name, craft in CRAFTED.items():
            craft(intact, os.path.join(out, name), os.path.join(out, f"marker_{name}"))
    fabric.barrier()
    for name in CRAFTED:
        result[name] = attempt(fabric, os.path.join(out, name))
    result["intact"] = attempt(fabric, intact)
    result["intact_full_unpickler"] = attempt(fabric, intact, weights_only=False)
    torch.save(result, os.path.join(out, f"rank{fabric.global_rank}.pt"))


if __name__ == "__main__":
    main(sys.argv[1])
