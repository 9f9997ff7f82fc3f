"""The 4-process training script behind test_pipeline_parallel.py and test_model_parallel.py (gloo on CPU).

    python pipeline_parallel_worker.py OUT_DIR TP2_DIR

Four processes run the pipeline layouts in turn, each under Fabrics of its own: "pp2tp2" (pipeline 2 x TP 2)
then "pp2dp2" (pipeline 2 x FSDP2 2). Each trains the tiny transformer with every schedule in turn beside a plain
copy of the model trained on each rank over the same global batches without any parallelism (the one-process
reference); "pp2tp2" also saves a DCP checkpoint, resumes from it, trains under bf16-mixed and collects the
bad-input errors; "pp2dp2" also trains with the stages a function returns (under 1F1B, and created on the meta
device under interleaved 1F1B, beside the reference trained from the weights it materialised) and loads the
"pp2tp2" checkpoint under FSDP2 x TP and under plain FSDP (no pipeline). `single`, which the test runs in its own
process, loads that checkpoint into the whole model. Then, since start-up dominates the cost, the same processes
run test_model_parallel.py's 4-process layout, `model_parallel_worker.dp2tp2` (FSDP2 x TP = 2 x 2, loading the
checkpoint that its 2-process layout saved in TP2_DIR). Each rank saves what it observed, by layout, to
OUT_DIR/rank<r>.pt.
"""
import os
import sys

import torch
from torch import nn
from torch.nn import functional as F

from fabric_kit import Fabric
from fabric_kit.checkpoint.consolidate import consolidate
from fabric_kit.strategies import ModelParallelStrategy
from fabric_kit.strategies.fsdp import FSDPStrategy
from tests.strategies import model_parallel_worker
from tests.strategies.model_parallel_model import (
    GLOBAL_BATCH,
    SPLIT,
    STEPS,
    Transformer,
    dataset,
    full_weights,
    parallelize,
)

LAYOUTS = {"pp2tp2": dict(data_parallel_size=1, tensor_parallel_size=2),
           "pp2dp2": dict(data_parallel_size=2, tensor_parallel_size=1)}
SPLITS = {"gpipe": ["blocks.1"], "1f1b": ["blocks.1"], "interleaved_1f1b": ["blocks.0", "blocks.1", "norm"]}


def loss_fn(logits, tokens):
    return F.cross_entropy(logits.flatten(0, 1), tokens.flatten())


class Stage(nn.Module):
    """A stage built from the Transformer's own modules, with a forward of its own: the embedding on the first
    stage, some blocks, the norm and head on the last."""

    def __init__(self, model, blocks, first, last):
        super().__init__()
        self.embed = model.embed if first else None
        self.blocks = nn.Sequential(*blocks)
        self.norm, self.head = (model.norm, model.head) if last else (None, None)

    def forward(self, x):
        x = self.blocks(x if self.embed is None else self.embed(x))
        return x if self.head is None else self.head(self.norm(x))


def by_function(model, pipeline_size):
    """`pipeline_split` as a function: the blocks spread evenly over `pipeline_size` stages."""
    per = len(model.blocks) // pipeline_size
    return [Stage(model, model.blocks[i * per:(i + 1) * per], i == 0, i == pipeline_size - 1)
            for i in range(pipeline_size)]


def four_stages(model, pipeline_size):
    """`pipeline_split` as a function for interleaved 1F1B: embed | block 0 | block 1 | norm, head, two stages per
    rank of a 2-rank pipeline."""
    (first, second), no_blocks = model.blocks, []
    return [Stage(model, no_blocks, True, False), Stage(model, [first], False, False),
            Stage(model, [second], False, False), Stage(model, no_blocks, False, True)]


def pipeline_strategy(layout):
    return ModelParallelStrategy(parallelize, pipeline_parallel_size=2, pipeline_split=SPLITS["1f1b"],
                                 pipeline_microbatches=2, **LAYOUTS[layout])


def launched(strategy, precision=None):
    fabric = Fabric(accelerator="cpu", devices=4, strategy=strategy, precision=precision)
    fabric.launch()
    return fabric


def use_schedule(strategy, schedule, split=None):
    strategy.pipeline_schedule = schedule
    strategy.pipeline_split = SPLITS[schedule] if split is None else split


def setup(fabric, seed, empty_init=False):
    torch.manual_seed(seed)
    with fabric.init_module(empty_init=empty_init):
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


def train(fabric, model, optimizer, batches, steps, loss_function=loss_fn):
    returned, norms = [], []
    for _, (tokens,) in zip(range(steps), batches, strict=False):
        optimizer.zero_grad()
        loss = fabric.forward_backward(model, tokens, tokens, loss_fn=loss_function)
        norms.append(fabric.clip_gradients(model, optimizer, max_norm=1.0))
        optimizer.step()
        returned.append(loss)
    return torch.stack(returned), torch.stack(norms)


def reference(initial=None):
    """The same training on one process: the whole model (from `initial` weights, else drawn from seed 0), the whole
    global batches."""
    torch.manual_seed(0)
    model = Transformer()
    if initial is not None:
        model.load_state_dict(initial)
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


def scheduled(fabric, schedule, out=None, split=None, end=None, empty_init=False):
    """Trained by `schedule` from the reference's initial weights, the model cut at `split` (None: SPLITS'); with
    `out`, saved there at step SPLIT; with `end`, the trained model saved there. With `empty_init`, created on the
    meta device instead: its weights are those it materialised, returned as "initial"."""
    use_schedule(fabric.strategy, schedule, split)
    raw, model, optimizer, loader = setup(fabric, seed=0, empty_init=empty_init)
    initial = gathered(fabric, raw) if empty_init else None
    batches = iter(loader)  # one pass: saving at SPLIT saves its position
    returned, norms = train(fabric, model, optimizer, batches, SPLIT)
    if out is not None:
        fabric.save(os.path.join(out, "pp_sharded"),
                    {"model": model, "optimizer": optimizer, "loader": loader, "step": SPLIT})
    more, more_norms = train(fabric, model, optimizer, batches, STEPS - SPLIT)
    returned, norms = torch.cat([returned, more]), torch.cat([norms, more_norms])
    if end is not None:
        fabric.save(end, {"model": model})
    return {"returned": returned, "mean": fabric.all_reduce(returned), "norms": norms, "initial": initial,
            "weights": gathered(fabric, raw), "held": sorted(name for name, _ in raw.named_parameters())}


def resumed(fabric, out):
    """Fresh objects (other initial weights), restored from the step-SPLIT checkpoint, trained to the end, under
    the pipeline or (another Fabric's strategy) without one."""
    raw, model, optimizer, loader = setup(fabric, seed=1)
    state = {"model": model, "optimizer": optimizer, "loader": loader, "step": 0}
    fabric.load(os.path.join(out, "pp_sharded"), state)
    samples = loader.state_dict()["samples"]
    returned, _ = train(fabric, model, optimizer, loader, STEPS - SPLIT)
    return {"step": state["step"], "samples": samples, "returned": returned, "mean": fabric.all_reduce(returned),
            "weights": gathered(fabric, raw)}


def mixed_precision(layout):
    """bf16-mixed under the pipeline, SPLIT steps: a stage's layer computes in bf16, the loss function gets float32
    logits, parameters and gradients stay float32."""
    fabric = launched(pipeline_strategy(layout), precision="bf16-mixed")
    raw, model, optimizer, loader = setup(fabric, seed=0)
    computed, received = [], set()
    hook = next(iter(raw.blocks)).mlp.w1.register_forward_hook(lambda module, args, output: computed.append(
        output.dtype))

    def recording(logits, tokens):
        received.add(logits.dtype)
        return loss_fn(logits, tokens)

    returned, _ = train(fabric, model, optimizer, iter(loader), SPLIT, loss_function=recording)
    hook.remove()
    return {"computed": set(computed), "received": received, "params": {p.dtype for p in raw.parameters()},
            "grads": {p.grad.dtype for p in raw.parameters()}, "mean": fabric.all_reduce(returned)}


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

    def three(model, pipeline_size):
        return [Stage(model, [block], i == 0, i == 1) for i, block in enumerate(model.blocks)] + [nn.Identity()]

    def a_tensor(model, pipeline_size):
        return [model, torch.zeros(1)]

    def copies(model, pipeline_size):
        return [Stage(model, model.blocks[:1], True, False), Stage(Transformer(), model.blocks[1:], False, True)]

    def no_head(model, pipeline_size):
        return [Stage(model, model.blocks[:1], True, False), model.blocks[1]]

    for name, split in (("fn_count", three), ("fn_not_a_module", a_tensor), ("fn_copies", copies),
                        ("fn_missing", no_head)):
        strategy.pipeline_split = split
        attempt(name, lambda: fabric.setup_module(Transformer()))
    return errors


def single(out):
    """One process (the test's own): the PP checkpoint, `fabric consolidate`d, loaded into the whole model, trained
    to the end; and the model trained with the stages a function returned, consolidated and loaded."""
    consolidate(os.path.join(out, "pp_sharded"), os.path.join(out, "consolidated.pt"))
    fabric = Fabric(accelerator="cpu", devices=1)
    raw, model, optimizer, loader = setup(fabric, seed=1)
    state = {"model": model, "optimizer": optimizer, "loader": loader, "step": 0}
    fabric.load(os.path.join(out, "consolidated.pt"), state)
    returned, _ = train(fabric, model, optimizer, loader, STEPS - SPLIT)
    consolidate(os.path.join(out, "fn_sharded"), os.path.join(out, "fn.pt"))
    whole = Transformer()
    fabric.load(os.path.join(out, "fn.pt"), {"model": fabric.setup_module(whole)})
    return {"step": state["step"], "returned": returned, "weights": full_weights(raw),
            "fn_weights": full_weights(whole)}


def run_layout(layout, out):
    """Every scenario of `layout` in these processes; (this rank, what it observed)."""
    strategy = pipeline_strategy(layout)
    fabric = launched(strategy)
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
        result["bf16"] = mixed_precision(layout)
    else:  # the checkpoint "pp2tp2" saved, loaded without a pipeline
        result["split_fn"] = scheduled(fabric, "1f1b", split=by_function, end=os.path.join(out, "fn_sharded"))
        meta = scheduled(fabric, "interleaved_1f1b", split=four_stages, empty_init=True)
        result["split_fn_interleaved_meta"] = {**meta, "reference": reference(meta["initial"])}
        result["dp2tp2_from_pp"] = resumed(launched(ModelParallelStrategy(parallelize, tensor_parallel_size=2)), out)
        result["fsdp_from_pp"] = resumed(launched(FSDPStrategy()), out)
    return fabric.global_rank, result


def main():
    out, tp2_out = sys.argv[1:3]
    results = {}
    for layout in LAYOUTS:  # "pp2dp2" loads the checkpoint "pp2tp2" saves
        rank, results[layout] = run_layout(layout, out)
    _, results["dp2tp2"] = model_parallel_worker.dp2tp2(tp2_out)  # test_model_parallel.py's 4-process layout
    torch.save(results, os.path.join(out, f"rank{rank}.pt"))


if __name__ == "__main__":
    main()
