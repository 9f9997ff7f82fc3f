"""A training script for test_deepspeed.py: 2 CPU processes on gloo, the tiny transformer of the DeepSpeed example.

    python deepspeed_worker.py OUT_DIR STRATEGY [STRATEGY ...]

This process becomes rank 0 and re-runs the command for rank 1 (the strategies' default launcher). The strategies
(deepspeed_stage_* presets or ddp) run one after the other in these two processes, each in a Fabric of its own that
joins the process group the first one set up (a pair of processes per strategy would import torch and DeepSpeed
again each time, most of a strategy's cost). Each rank records, for each STRATEGY:
- "uninterrupted": the losses of STEPS steps;
- "before_save" / "resumed": the same run cut at SPLIT, saved, loaded into a freshly set-up model built from other
  initial weights and continued;
- "clipped": losses and the norms clip_gradients returned, of steps clipped by it and then of steps not clipped;
- "accumulated": losses of steps of two micro-batches each. Under ddp and stage 1 the first micro-batch runs inside
  `no_backward_sync`; under stages 2 and 3, which refuse that (recorded as "no_sync_error"), DeepSpeed accumulates
  with gradient_accumulation_steps=2 and the loop steps every micro-batch;
- "accumulated_items": losses of steps of three micro-batches of different sizes, by `fabric.accumulate` weighing
  them by their tokens.
Under DeepSpeed also, loading with default arguments as everywhere else (the resumed run above):
- "full_unpickler": the first loss after loading the same checkpoint with weights_only=False;
- "crafted_<kind>": what loading a copy whose model or optimizer states files run code when unpickled (creating
  OUT_DIR/marker_<kind>) raised.
It saves them to OUT_DIR/rank<r>.pt, by strategy; each strategy's checkpoints go to OUT_DIR/<strategy>.
"""
import os
import sys
from pathlib import Path

import torch

# The example is a user script, not a module of a package: its model is imported from the folder that running it
# would put first on the path.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "fabric"))
from deepspeed_zero import TinyLM, batch, next_token_loss  # noqa: E402

from fabric_kit import Fabric  # noqa: E402
from tests.helpers.crafted import crafted_files  # noqa: E402
from tests.helpers.processes import run_in_turn  # noqa: E402

STEPS, SPLIT, MICRO = 8, 4, 2
CLIPPED, MAX_NORM = 3, 0.1
CRAFTED = {"model_states": "checkpoint/*model_states.pt", "optim_states": "checkpoint/*optim_states.pt"}


def fresh(fabric, seed):
    torch.manual_seed(seed)
    model = TinyLM(width=16, layers=2, heads=2)
    return fabric.setup(model, torch.optim.AdamW(model.parameters(), lr=1e-2))


def train(fabric, model, optimizer, steps, named):
    losses = []
    for step in steps:
        loss = next_token_loss(model, batch(step, fabric.global_rank, size=4))
        fabric.backward(loss, model=model) if named else fabric.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def accumulate(fabric, result):
    strategy = fabric.strategy
    partitioned = getattr(strategy, "zero_stage", 0) >= 2
    if partitioned:
        model, _ = fresh(fabric, 0)
        try:
            with fabric.no_backward_sync(model):
                pass
        except RuntimeError as error:
            result["no_sync_error"] = str(error)
        strategy.config["gradient_accumulation_steps"] = MICRO  # read when the next model is set up
    model, optimizer = fresh(fabric, 0)
    losses = []
    for step in range(3):
        for micro in range(MICRO):
            tokens = batch(100 * step + micro, fabric.global_rank, size=4)
            if partitioned:  # the engine divides by gradient_accumulation_steps and steps every MICRO calls
                loss = next_token_loss(model, tokens)
                fabric.backward(loss, model=model)
                optimizer.step()
            else:
                with fabric.no_backward_sync(model, enabled=micro < MICRO - 1):
                    loss = next_token_loss(model, tokens)
                    fabric.backward(loss / MICRO, model=model)
            losses.append(loss.item())
        if not partitioned:
            optimizer.step()
            optimizer.zero_grad()
    result["accumulated"] = losses


def accumulate_items(fabric, result):
    """`fabric.accumulate` weighing micro-batches of different sizes by their tokens, 3 steps of 3 micro-batches:
    DeepSpeed's own accumulation (its boundary set by each micro-batch; under stages 2 and 3 the config's
    gradient_accumulation_steps, set by `accumulate` above, stays unused)."""
    model, optimizer = fresh(fabric, 0)
    sizes = [1, 3, 2] if fabric.global_rank == 0 else [4, 1, 2]
    batches = [batch(200 + step, fabric.global_rank, size=sizes[step % 3]) for step in range(9)]
    losses = []
    for micro, tokens in fabric.accumulate(model, batches, 3, num_items=lambda tokens: tokens[:, 1:].numel()):
        with micro:
            loss = next_token_loss(model, tokens)
            fabric.backward(micro.scale(loss), model=model)
        losses.append(loss.item())
        if micro.is_last:
            optimizer.step()
            optimizer.zero_grad()
    result["accumulated_items"] = losses


def clipped(fabric, result):
    """SGD (whose update, unlike Adam's, scales with the gradient): CLIPPED steps clipped by fabric.clip_gradients,
    then two without, which DeepSpeed must not clip any more."""
    torch.manual_seed(0)
    model = TinyLM(width=16, layers=2, heads=2)
    model, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.5))
    losses, norms = [], []
    for step in range(CLIPPED + 2):
        loss = next_token_loss(model, batch(step, fabric.global_rank, size=4))
        fabric.backward(loss, model=model)
        if step < CLIPPED:
            norms.append(fabric.clip_gradients(model, optimizer, max_norm=MAX_NORM).item())
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    result["clipped"] = {"losses": losses, "norms": norms}


def loading_safely(fabric, checkpoint, out_dir, result):
    model, optimizer = fresh(fabric, 1)
    state = {"model": model, "optimizer": optimizer, "step": 0}
    fabric.load(checkpoint, state, weights_only=False)
    result["full_unpickler"] = train(fabric, model, optimizer, [state["step"]], named=True)
    if fabric.is_global_zero:
        for kind, pattern in CRAFTED.items():
            crafted_files(checkpoint, os.path.join(out_dir, f"crafted_{kind}"),
                          os.path.join(out_dir, f"marker_{kind}"), pattern)
    fabric.barrier()
    for kind in CRAFTED:
        model, optimizer = fresh(fabric, 1)
        try:
            fabric.load(os.path.join(out_dir, f"crafted_{kind}"), {"model": model, "optimizer": optimizer})
            result[f"crafted_{kind}"] = "loaded"
        except Exception as error:  # noqa: BLE001 - the test asserts on what was raised
            result[f"crafted_{kind}"] = {"error": type(error).__name__, "message": str(error),
                                         "path": getattr(error, "path", None)}
        fabric.barrier()


def run(strategy, out_dir):
    fabric = Fabric(accelerator="cpu", devices=2, strategy=strategy)
    fabric.launch()
    result = {}
    model, optimizer = fresh(fabric, 0)
    result["uninterrupted"] = train(fabric, model, optimizer, range(STEPS), named=False)  # the only model yet

    model, optimizer = fresh(fabric, 0)
    result["before_save"] = train(fabric, model, optimizer, range(SPLIT), named=True)
    checkpoint = os.path.join(out_dir, "checkpoint")
    fabric.save(checkpoint, {"model": model, "optimizer": optimizer, "step": SPLIT, "note": "kept"})

    model, optimizer = fresh(fabric, 1)  # other initial weights: everything must come from the checkpoint
    state = {"model": model, "optimizer": optimizer, "step": 0}
    remainder = fabric.load(checkpoint, state)
    result["loaded_step"], result["remainder"] = state["step"], remainder
    result["resumed"] = train(fabric, model, optimizer, range(state["step"], STEPS), named=True)

    if strategy != "ddp":
        loading_safely(fabric, checkpoint, out_dir, result)
    clipped(fabric, result)
    accumulate(fabric, result)
    accumulate_items(fabric, result)
    result["checkpoint_files"] = sorted(str(p.relative_to(checkpoint)) for p in Path(checkpoint).rglob("*")
                                        if p.is_file())
    result["out_dir"] = str(out_dir)
    return fabric.global_rank, result


if __name__ == "__main__":
    run_in_turn(sys.argv[1], sys.argv[2:], run)
