"""The training script behind test_pipeline_parallel.py (gloo on CPU).

    python pipeline_parallel_worker.py LAYOUT OUT_DIR

LAYOUT "pp2dp2" (4 processes: pipeline 2 x FSDP2 2) or "pp2tp2" (4 processes: pipeline 2 x tensor parallel 2)
trains the tiny transformer with every schedule in turn, in the same processes, beside a plain copy of the model
trained on each rank over the same global batches without any parallelism (the one-process reference); "pp2tp2"
also saves a DCP checkpoint, resumes from it, and collects the bad-input errors. "single" (1 process) loads that
checkpoint into the whole model. Each rank saves what it observed to OUT_DIR/rank<r>.pt.
"""
import os
import sys

import torch
from torch.nn import functional as F

from fabric_kit import Fabric
from fabric_kit.checkpoint.consolidate import consolidate
from fabric_kit.strategies import ModelParallelStrategy
from fabric_kit.strategies.pipeline import check_schedule
from tests.strategies.model_parallel_model import (
    GLOBAL_BATCH,
    SPLIT,
    STEPS,
    Transformer,
    dataset,
    full_weights,
    parallelize,
)

LAYOUTS = {"pp2dp2": dict(data_parallel_size=2, tensor_parallel_size=1),
           "pp2tp2": dict(data_parallel_size=1, tensor_parallel_size=2)}
SPLITS = {"gpipe": ["blocks.1"], "1f1b": ["blocks.1"], "interleaved_1f1b": ["blocks.0", "blocks.1", "norm"]}


def loss_fn(logits, tokens):
    return F.cross_entropy(logits.flatten(0, 1), tokens.flatten())


def use_schedule(strategy, schedule):
    strategy.pipeline_schedule, strategy.pipeline_split = schedule, SPLITS[schedule]
    strategy.stages_per_rank = check_schedule(schedule, len(SPLITS[schedule]) + 1, strategy.pipeline_parallel_size)


def setup(fabric, seed):
    torch.manual_seed(seed)
    raw = Transformer()
    model = fabric.setup_module(raw)
    optimizer = fabric.setup_optimizers(torch.optim.AdamW(model.parameters(), lr=1e-2))
    shard = fabric.strategy.distributed_sampler_kwargs
    replicas = shard["num_replicas"] if shard else 1
    loader = fabric.setup_dataloaders(torch.utils.data.DataLoader(dataset(), batch_size=GLOBAL_BATCH // replicas))
    return raw, model, optimizer, loader


def gathered(fabric, raw):
    """The whole model's weights, from every stage's ranks."""
    weights = {}
    for part in fabric.strategy.all_gather_object(full_weights(raw)):
        weights.update(part)
    return weights


def train(fabric, model, optimizer, batches, steps):
    returned, norms = [], []
    for _, (tokens,) in zip(range(steps), batches, strict=False):
        optimizer.zero_grad()
        loss = fabric.forward_backward(model, tokens, tokens, loss_fn=loss_fn)
        norms.append(fabric.clip_gradients(model, optimizer, max_norm=1.0))
        optimizer.step()
        returned.append(loss)
    return torch.stack(returned), torch.stack(norms)


def reference():
    """The same training on one process: the whole model, the whole global batches."""
    torch.manual_seed(0)
    model = Transformer()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses, norms = [], []
    for (tokens,) in torch.utils.data.DataLoader(dataset(), batch_size=GLOBAL_BATCH):
        optimizer.zero_grad()
        loss = loss_fn(model(tokens), tokens)
        loss.backward()
        norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
        optimizer.step()
        losses.append(loss.detach())
    return {"losses": torch.stack(losses), "norms": torch.stack(norms), "weights": full_weights(model)}


def scheduled(fabric, schedule, out=None):
    """Trained by `schedule` from the reference's initial weights; with `out`, saved there at step SPLIT."""
    use_schedule(fabric.strategy, schedule)
    raw, model, optimizer, loader = setup(fabric, seed=0)
    batches = iter(loader)  # one pass: saving at SPLIT saves its position
    returned, norms = train(fabric, model, optimizer, batches, SPLIT)
    if out is not None:
        fabric.save(os.path.join(out, "pp_sharded"),
                    {"model": model, "optimizer": optimizer, "loader": loader, "step": SPLIT})
    more, more_norms = train(fabric, model, optimizer, batches, STEPS - SPLIT)
    returned, norms = torch.cat([returned, more]), torch.cat([norms, more_norms])
    return {"returned": returned, "mean": fabric.all_reduce(returned), "norms": norms,
            "weights": gathered(fabric, raw), "held": sorted(name for name, _ in raw.named_parameters())}


def resumed(fabric, out):
    """Fresh objects (other initial weights), restored from the step-SPLIT checkpoint, trained to the end."""
    raw, model, optimizer, loader = setup(fabric, seed=1)
    state = {"model": model, "optimizer": optimizer, "loader": loader, "step": 0}
    fabric.load(os.path.join(out, "pp_sharded"), state)
    returned, _ = train(fabric, model, optimizer, loader, STEPS - SPLIT)
    return {"step": state["step"], "returned": returned, "weights": gathered(fabric, raw)}


def meta_init(fabric):
    """Created on the meta device: each rank materialises only its stage's parameters."""
    use_schedule(fabric.strategy, "1f1b")
    with fabric.init_module(empty_init=True):
        raw = Transformer()
    fabric.setup_module(raw)
    tensors = [*raw.parameters(), *raw.buffers()]
    return {"meta_left": any(t.is_meta for t in tensors), "held": sorted(name for name, _ in raw.named_parameters()),
            "finite": all(torch.isfinite(t.full_tensor() if hasattr(t, "full_tensor") else t).all()
                          for t in raw.parameters()),
            "embed": full_weights(raw).get("embed.weight")}


def bad_inputs(fabric):
    errors = {}

    def attempt(name, call):
        try:
            call()
        except (TypeError, ValueError, RuntimeError) as error:
            errors[name] = str(error)

    strategy = fabric.strategy
    strategy.pipeline_split = ["blocks.9"]
    attempt("missing_module", lambda: fabric.setup_module(Transformer()))
    use_schedule(strategy, "1f1b")
    model = fabric.setup_module(Transformer())
    tokens = dataset().tensors[0][:3]
    attempt("microbatches", lambda: fabric.forward_backward(model, tokens, tokens, loss_fn=loss_fn))
    attempt("model_call", lambda: model(tokens))
    return errors


def single(out):
    """The PP checkpoint, `fabric consolidate`d, loaded into the whole model on one process, trained to the end."""
    consolidate(os.path.join(out, "pp_sharded"), os.path.join(out, "consolidated.pt"))
    fabric = Fabric(accelerator="cpu", devices=1)
    raw, model, optimizer, loader = setup(fabric, seed=1)
    state = {"model": model, "optimizer": optimizer, "loader": loader, "step": 0}
    fabric.load(os.path.join(out, "consolidated.pt"), state)
    returned, _ = train(fabric, model, optimizer, loader, STEPS - SPLIT)
    return {"step": state["step"], "returned": returned, "weights": full_weights(raw)}


def main():
    layout, out = sys.argv[1:3]
    if layout == "single":
        torch.save(single(out), os.path.join(out, "rank0.pt"))
        return
    strategy = ModelParallelStrategy(parallelize, pipeline_parallel_size=2, pipeline_split=SPLITS["1f1b"],
                                     pipeline_microbatches=2,
                                     **LAYOUTS[layout])
    fabric = Fabric(accelerator="cpu", devices=4, strategy=strategy)
    fabric.launch()
    result = {"reference": reference(), "mesh": (strategy.device_mesh.mesh_dim_names,
                                                  tuple(strategy.device_mesh.shape))}
    for schedule in SPLITS:
        saves = layout == "pp2tp2" and schedule == "1f1b"
        result[schedule] = scheduled(fabric, schedule, out if saves else None)
        if saves:
            result["resumed"] = resumed(fabric, out)
    if layout == "pp2tp2":
        result["meta"] = meta_init(fabric)
        result["errors"] = bad_inputs(fabric)
    torch.save(result, os.path.join(out, f"rank{fabric.global_rank}.pt"))


if __name__ == "__main__":
    main()
