"""The training script behind test_model_parallel.py (gloo on CPU).

    python model_parallel_worker.py LAYOUT OUT_DIR

LAYOUT is "tp2" (2 processes, TP = 2), "dp2tp2" (4 processes, FSDP2 x TP = 2 x 2), "fsdp2" (2 processes, plain
FSDP), "single" (1 process), or "tp2_bf16" (TP = 2 under bf16-mixed, the precision scenario only). Each trains
the same global batches from the same initial weights and runs its scenarios in the same processes (start-up
dominates the cost); "tp2" also saves the checkpoints at step SPLIT that the other layouts resume from (so it runs
first). Each rank saves what it observed to OUT_DIR/rank<r>.pt.
"""
import os
import sys

import torch
from torch.distributed.tensor import DTensor

from fabric_kit import Fabric
from fabric_kit.checkpoint.consolidate import consolidate
from fabric_kit.strategies import ModelParallelStrategy
from fabric_kit.strategies.fsdp import FSDPStrategy
from tests.strategies.model_parallel_model import (
    GLOBAL_BATCH,
    SPLIT,
    STEPS,
    Transformer,
    dataset,
    full_weights,
    loss_of,
    parallelize,
)

LAYOUTS = {"tp2": 2, "dp2tp2": 4, "fsdp2": 2, "single": 1, "tp2_bf16": 2}


def strategy_for(layout):
    if layout in ("tp2", "tp2_bf16"):
        return ModelParallelStrategy(parallelize, data_parallel_size=1, tensor_parallel_size=2)
    if layout == "dp2tp2":
        return ModelParallelStrategy(parallelize, tensor_parallel_size=2)  # data_parallel_size "auto": 2
    return FSDPStrategy() if layout == "fsdp2" else "auto"


def data_parallel_size(fabric):
    kwargs = fabric.strategy.distributed_sampler_kwargs
    return kwargs["num_replicas"] if kwargs else 1


def setup(fabric, seed, empty_init=False):
    """Model, optimizer and loader, the model's initial weights drawn from `seed`."""
    torch.manual_seed(seed)
    with fabric.init_module(empty_init=empty_init):
        raw = Transformer()
    model = fabric.setup_module(raw)
    optimizer = fabric.setup_optimizers(torch.optim.AdamW(model.parameters(), lr=1e-2))
    loader = fabric.setup_dataloaders(torch.utils.data.DataLoader(
        dataset(), batch_size=GLOBAL_BATCH // data_parallel_size(fabric), shuffle=False))
    return raw, model, optimizer, loader


def train(fabric, model, optimizer, batches, steps):
    losses, norms = [], []
    for _, (tokens,) in zip(range(steps), batches, strict=False):
        loss = loss_of(model, tokens)
        optimizer.zero_grad()
        fabric.backward(loss)
        norms.append(fabric.clip_gradients(model, optimizer, max_norm=1.0))
        optimizer.step()
        losses.append(fabric.all_reduce(loss.detach()).item())
    return losses, norms


def uninterrupted(fabric, out, save_split):
    raw, model, optimizer, loader = setup(fabric, seed=0)
    batches = iter(loader)  # one pass: saving at SPLIT saves its position
    losses, norms = train(fabric, model, optimizer, batches, SPLIT)
    if save_split:
        state = {"model": model, "optimizer": optimizer, "loader": loader, "step": SPLIT}
        fabric.save(os.path.join(out, "split_sharded"), state)
        fabric.strategy.save_distributed_checkpoint = False
        fabric.save(os.path.join(out, "split_full.pt"), state)
        fabric.strategy.save_distributed_checkpoint = True
    more, more_norms = train(fabric, model, optimizer, batches, STEPS - SPLIT)
    result = {"losses": losses + more, "norms": torch.stack([*norms, *more_norms]), "weights": full_weights(raw)}
    result["local"] = {name: p.to_local().clone() for name, p in raw.named_parameters() if isinstance(p, DTensor)}
    result["placements"] = {name: str(p.placements) for name, p in raw.named_parameters() if isinstance(p, DTensor)}
    return result


def resumed(fabric, path):
    """Fresh objects (other initial weights), restored from `path` at step SPLIT, trained to the end."""
    raw, model, optimizer, loader = setup(fabric, seed=1)
    state = {"model": model, "optimizer": optimizer, "loader": loader, "step": 0}
    fabric.load(path, state)
    samples = loader.state_dict()["samples"]
    losses, _ = train(fabric, model, optimizer, loader, STEPS - SPLIT)
    return {"losses": losses, "step": state["step"], "samples": samples, "weights": full_weights(raw)}


def meta_init(fabric):
    """Created on the meta device, materialised after parallelizing."""
    raw, _, _, _ = setup(fabric, seed=0, empty_init=True)
    return {"meta_left": any(t.is_meta for t in (*raw.parameters(), *raw.buffers())),
            "finite": all(torch.isfinite(p.to_local() if isinstance(p, DTensor) else p).all()
                          for p in raw.parameters()),
            "local": {name: (p.to_local() if isinstance(p, DTensor) else p).detach().clone()
                      for name, p in raw.named_parameters()}}


def no_backward_sync(fabric):
    """Two micro-batches, the first without gradient sync, give the gradients of two synced backwards."""
    grads = []
    for skip in (False, True):
        raw, model, _, loader = setup(fabric, seed=0)
        (tokens,) = next(iter(loader))
        for i, micro in enumerate((slice(0, 2), slice(2, 4))):
            with fabric.no_backward_sync(model, enabled=skip and i == 0):
                fabric.backward(loss_of(model, tokens[micro]))
        grads.append([p.grad.full_tensor() for p in raw.parameters()])
    return max((a - b).abs().max().item() for a, b in zip(*grads, strict=True))


def bad_inputs(fabric):
    errors = {}
    strategy = fabric.strategy

    def attempt(name, call):
        try:
            call()
        except (TypeError, ValueError) as error:
            errors[name] = str(error)

    plain = Transformer()
    attempt("optimizer_first", lambda: fabric.setup(plain, torch.optim.SGD(plain.parameters(), lr=0.1)))
    attempt("optimizers_before_model", lambda: fabric.setup_optimizers(torch.optim.SGD(plain.parameters(), lr=0.1)))

    def no_parallelism(model, device_mesh):
        return model

    def returns_nothing(model, device_mesh):
        return None

    for name, fn in (("no_dtensor", no_parallelism), ("not_a_module", returns_nothing)):
        strategy.parallelize_fn = fn
        attempt(name, lambda: fabric.setup_module(Transformer()))
    strategy.parallelize_fn = parallelize
    return errors


def mixed_precision(fabric):
    """bf16 compute (a tensor-parallel layer's output), float32 parameters and gradients, and it trains."""
    raw, model, optimizer, loader = setup(fabric, seed=0)
    (tokens,) = next(iter(loader))
    computed = []
    hook = raw.blocks[0].mlp.w1.register_forward_hook(lambda module, args, output: computed.append(output.dtype))
    model(tokens)
    hook.remove()
    losses, _ = train(fabric, model, optimizer, iter(loader), STEPS)
    return {"computed": computed[0], "params": {p.dtype for p in raw.parameters()},
            "grads": {p.grad.dtype for p in raw.parameters()}, "losses": losses}


def main():
    layout, out = sys.argv[1:3]
    precision = "bf16-mixed" if layout == "tp2_bf16" else None
    fabric = Fabric(accelerator="cpu", devices=LAYOUTS[layout], strategy=strategy_for(layout), precision=precision)
    fabric.launch()
    result = {}
    if layout == "tp2_bf16":
        torch.save({"bf16": mixed_precision(fabric)}, os.path.join(out, f"rank{fabric.global_rank}.pt"))
        return
    if layout == "tp2":
        result["errors"] = bad_inputs(fabric)
    result["run"] = uninterrupted(fabric, out, save_split=layout == "tp2")
    if layout == "single":
        consolidate(os.path.join(out, "split_sharded"), os.path.join(out, "consolidated.pt"))
        result["from_full"] = resumed(fabric, os.path.join(out, "split_full.pt"))
        result["from_consolidated"] = resumed(fabric, os.path.join(out, "consolidated.pt"))
    else:
        result["from_sharded"] = resumed(fabric, os.path.join(out, "split_sharded"))
    if layout in ("tp2", "dp2tp2"):
        result["meta"] = meta_init(fabric)
        result["mesh"] = fabric.strategy.device_mesh.mesh_dim_names, tuple(fabric.strategy.device_mesh.shape)
    if layout == "dp2tp2":
        result["no_backward_sync"] = no_backward_sync(fabric)
    torch.save(result, os.path.join(out, f"rank{fabric.global_rank}.pt"))


if __name__ == "__main__":
    main()
