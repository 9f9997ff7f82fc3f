"""The run behind test_model_parallel_resume.py (gloo on CPU): the model-parallel tests' transformer trained for
TOTAL steps over shuffled epochs of STEPS batches, a sharded checkpoint saved every SAVE_EVERY steps, resuming from
the newest intact one at start-up.

    python model_parallel_resume_worker.py LAYOUT CKPT_DIR OUT [KILL_AT]

LAYOUT "dp2tp2": 4 processes, FSDP2 x TP = 2 x 2; "tp2": 2 processes, TP = 2; "pp2dp2": 4 processes, pipeline 2 x
FSDP2 2. The step is `fabric.forward_backward`, the plain forward, loss and backward without a pipeline. With
KILL_AT, every rank SIGKILLs itself right after that step, unless it resumed. Rank 0 saves what the run ended with
to OUT.
"""
import os
import signal
import sys
from pathlib import Path

import torch

from fabric_kit import Fabric
from fabric_kit.checkpoint import latest_checkpoint
from fabric_kit.strategies import ModelParallelStrategy
from tests.strategies.model_parallel_model import full_weights, parallelize
from tests.strategies.model_parallel_worker import setup
from tests.strategies.pipeline_parallel_worker import loss_fn

TOTAL, SAVE_EVERY = 14, 5  # epochs of 8 steps: checkpoints at steps 5 and 10, the end in the second epoch
LAYOUTS = {"dp2tp2": (4, {"tensor_parallel_size": 2}), "tp2": (2, {"tensor_parallel_size": 2}),
           "pp2dp2": (4, {"data_parallel_size": 2, "tensor_parallel_size": 1, "pipeline_parallel_size": 2,
                          "pipeline_split": ["blocks.1"]})}


def run(fabric, checkpoints=None, kill_at=None):
    """Train to step TOTAL (saving into and resuming from `checkpoints`, a folder, when given); returns where the
    run resumed, where its loader stands and the weights gathered from every rank (each pipeline stage's)."""
    raw, model, optimizer, loader = setup(fabric, seed=0, shuffle=True)
    state = {"model": model, "optimizer": optimizer, "loader": loader, "step": 0}
    latest = latest_checkpoint(checkpoints) if checkpoints else None
    if latest is not None:
        fabric.load(latest, state)
    resumed_from = state["step"]
    while state["step"] < TOTAL:
        for (tokens,) in loader:
            optimizer.zero_grad()
            fabric.forward_backward(model, tokens, tokens, loss_fn=loss_fn)
            optimizer.step()
            state["step"] += 1
            if checkpoints and state["step"] % SAVE_EVERY == 0:
                fabric.save(Path(checkpoints) / f"step-{state['step']:05d}.ckpt", state)
            if state["step"] == kill_at and resumed_from == 0:
                os.kill(os.getpid(), signal.SIGKILL)
            if state["step"] == TOTAL:
                break
    position = loader.state_dict()
    weights = {}
    for part in fabric.strategy.all_gather_object(full_weights(raw)):
        weights.update(part)
    return {"resumed_from": resumed_from, "epoch": position["epoch"], "samples": position["samples"],
            "weights": weights}


def main():
    layout, checkpoints, out = sys.argv[1:4]
    kill_at = int(sys.argv[4]) if len(sys.argv) > 4 else None
    processes, sizes = LAYOUTS[layout]
    fabric = Fabric(accelerator="cpu", devices=processes, strategy=ModelParallelStrategy(parallelize, **sizes))
    fabric.launch()
    result = run(fabric, checkpoints, kill_at)
    if fabric.is_global_zero:
        torch.save(result, out)


if __name__ == "__main__":
    main()
