"""The training script behind test_model_parallel.py (gloo on CPU).

    python model_parallel_worker.py OUT_DIR

runs the 2-process layout, `tp2`; pipeline_parallel_worker.py runs the 4-process one, `dp2tp2` (FSDP2 x TP =
2 x 2), in the processes of the pipeline layouts, and test_model_parallel.py the one-process layout in its own
process through `single`. Each trains the same global batches from the same initial weights. Start-up dominates the
cost, so every scenario of a world size runs in one set of processes, each under a Fabric of its own: `tp2` trains
under TP = 2 and saves the checkpoints at step SPLIT that every other layout resumes from (so it runs first),
resumes from them itself and under plain FSDP, trains under bf16-mixed, and runs model_parallel_parity.py's loop
under fabric_kit's Fabric and then under Lightning's. Each rank saves what it observed to OUT_DIR/rank<r>.pt.
"""
import os
import sys

import torch
from torch.distributed.tensor import DTensor

from fabric_kit import Fabric
from fabric_kit.checkpoint.consolidate import consolidate
from fabric_kit.strategies import ModelParallelStrategy
from fabric_kit.strategies.fsdp import FSDPStrategy
from tests.strategies import model_parallel_parity
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


def launched(devices, strategy, precision=None):
    fabric = Fabric(accelerator="cpu", devices=devices, strategy=strategy, precision=precision)
    fabric.launch()
    return fabric


def tensor_parallel():
    return ModelParallelStrategy(parallelize, data_parallel_size=1, tensor_parallel_size=2)


def data_parallel_size(fabric):
    kwargs = fabric.strategy.distributed_sampler_kwargs
    return kwargs["num_replicas"] if kwargs else 1


def setup(fabric, seed, empty_init=False, shuffle=False):
    """Model, optimizer and loader, the model's initial weights drawn from `seed`."""
    torch.manual_seed(seed)
    with fabric.init_module(empty_init=empty_init):
        raw = Transformer()
    model = fabric.setup_module(raw)
    optimizer = fabric.setup_optimizers(torch.optim.AdamW(model.parameters(), lr=1e-2))
    loader = fabric.setup_dataloaders(torch.utils.data.DataLoader(
        dataset(), batch_size=GLOBAL_BATCH // data_parallel_size(fabric), shuffle=shuffle))
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
    early = torch.optim.SGD(plain.parameters(), lr=0.1)  # built before setup_module replaced the TP layers' weights
    fabric.setup_module(plain)
    attempt("optimizer_before_setup_module", lambda: fabric.setup_optimizers(early))

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


def mesh_of(fabric):
    return fabric.strategy.device_mesh.mesh_dim_names, tuple(fabric.strategy.device_mesh.shape)


def tp2(out):
    fabric = launched(2, tensor_parallel())
    result = {"errors": bad_inputs(fabric), "run": uninterrupted(fabric, out, save_split=True)}
    result["from_sharded"] = resumed(fabric, os.path.join(out, "split_sharded"))
    result.update(meta=meta_init(fabric), mesh=mesh_of(fabric))
    result["bf16"] = mixed_precision(launched(2, tensor_parallel(), precision="bf16-mixed"))
    result["fsdp_from_sharded"] = resumed(launched(2, FSDPStrategy()), os.path.join(out, "split_sharded"))
    result["parity"] = model_parallel_parity.train(launched(2, ModelParallelStrategy(parallelize)))
    result["lightning_parity"] = under_lightning()
    return fabric.global_rank, result


def under_lightning():
    """model_parallel_parity.train under Lightning's Fabric and ModelParallelStrategy, last: it joins these
    processes' process group (its launcher sees the one that started them); None without lightning installed."""
    try:
        from lightning.fabric import Fabric as LightningFabric
        from lightning.fabric.strategies import ModelParallelStrategy as LightningModelParallelStrategy
    except ImportError:
        return None
    fabric = LightningFabric(accelerator="cpu", devices=2, strategy=LightningModelParallelStrategy(parallelize))
    fabric.launch()
    return model_parallel_parity.train(fabric)


def dp2tp2(tp2_out):
    """FSDP2 x TP = 2 x 2, resuming from the checkpoint `tp2` saved in `tp2_out` among the rest."""
    fabric = launched(4, ModelParallelStrategy(parallelize, tensor_parallel_size=2))  # data_parallel_size "auto": 2
    result = {"run": uninterrupted(fabric, tp2_out, save_split=False),
              "from_sharded": resumed(fabric, os.path.join(tp2_out, "split_sharded")),
              "meta": meta_init(fabric), "mesh": mesh_of(fabric), "no_backward_sync": no_backward_sync(fabric)}
    return fabric.global_rank, result


def single(out):
    """One process (run by the test itself): the reference training, and resumes from the full file and from the
    consolidated shards that "tp2" saved in `out`."""
    fabric = launched(1, "auto")
    consolidate(os.path.join(out, "split_sharded"), os.path.join(out, "consolidated.pt"))
    return {"run": uninterrupted(fabric, out, save_split=False),
            "from_full": resumed(fabric, os.path.join(out, "split_full.pt")),
            "from_consolidated": resumed(fabric, os.path.join(out, "consolidated.pt"))}


def main():
    out = sys.argv[1]
    rank, result = tp2(out)
    torch.save(result, os.path.join(out, f"rank{rank}.pt"))


if __name__ == "__main__":
    main()
