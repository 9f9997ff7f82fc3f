"""The training script behind test_fsdp.py (2 CPU processes, gloo).

    python fsdp_worker.py OUT_DIR STRATEGY [STRATEGY ...]

Every STRATEGY runs in turn in the same two processes (process start-up dominates the cost), each in a Fabric of its
own on the process group the first one set up, and in OUT_DIR/<STRATEGY>: with "fsdp" every scenario; with "ddp"
only the uninterrupted run, for parity; with "fsdp_lightning_arguments" a short run of the strategy built from
Lightning-style arguments. Each rank saves what it observed, by strategy, to OUT_DIR/rank<r>.pt.
"""
import os
import shutil
import sys

import torch
from torch import nn
from torch.nn import functional as F

from fabric_kit import Fabric
from fabric_kit.collective_log import LOG
from fabric_kit.strategies.fsdp import FSDPStrategy
from tests.helpers.processes import run_in_turn
from tests.wrappers_ddp_worker import step_methods

VOCAB, DIM, SEQ, STEPS, SPLIT = 8, 16, 6, 12, 6


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(DIM), nn.LayerNorm(DIM)
        self.qkv, self.proj = nn.Linear(DIM, 3 * DIM), nn.Linear(DIM, DIM)
        self.mlp = nn.Sequential(nn.Linear(DIM, 2 * DIM), nn.GELU(), nn.Linear(2 * DIM, DIM))

    def forward(self, x):
        q, k, v = self.qkv(self.norm1(x)).unflatten(-1, (3, 2, DIM // 2)).unbind(2)  # 2 heads
        attention = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), is_causal=True)
        x = x + self.proj(attention.transpose(1, 2).flatten(2))
        return x + self.mlp(self.norm2(x))


class TinyTransformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.blocks = nn.Sequential(Block(), Block())
        self.head = nn.Linear(DIM, VOCAB)

    def forward(self, tokens):
        return self.head(self.blocks(self.embed(tokens)))


def batches(steps, size=8):
    """Global batches of a copy task; rank r trains on its half of each."""
    generator = torch.Generator().manual_seed(1234)
    for _ in range(steps):
        tokens = torch.randint(0, VOCAB, (size, SEQ), generator=generator)
        yield tokens, tokens


def model_and_optimizer(fabric, empty_init=False):
    with fabric.init_module(empty_init=empty_init):
        model = TinyTransformer()
    model = fabric.setup_module(model)
    optimizer = fabric.setup_optimizers(torch.optim.AdamW(model.parameters(), lr=1e-2))
    return model, optimizer


def train(fabric, model, optimizer, steps):
    half = slice(fabric.global_rank * 4, fabric.global_rank * 4 + 4)
    losses, norms = [], []
    for x, y in steps:
        loss = F.cross_entropy(model(x[half]).flatten(0, 1), y[half].flatten())
        optimizer.zero_grad()
        fabric.backward(loss)
        norms.append(fabric.clip_gradients(model, optimizer, max_norm=100.0))
        optimizer.step()
        losses.append(loss.item())
    return losses, norms


def full_weights(model):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def resumed(fabric, out, kind):
    """Train SPLIT steps, save, then restore into freshly set up objects and finish the run."""
    fabric.strategy.state_dict_type = kind
    path = os.path.join(out, f"checkpoint_{kind}")
    torch.manual_seed(0)
    model, optimizer = model_and_optimizer(fabric)
    steps = batches(STEPS)
    first, _ = train(fabric, model, optimizer, [next(steps) for _ in range(SPLIT)])
    fabric.save(path, {"model": model, "optimizer": optimizer, "step": SPLIT})
    torch.manual_seed(1)  # different initial weights: everything must come from the checkpoint
    model, optimizer = model_and_optimizer(fabric)
    state = {"model": model, "optimizer": optimizer, "step": 0}
    fabric.load(path, state)
    rest, _ = train(fabric, model, optimizer, steps)
    return {"losses": first + rest, "step": state["step"], "is_dir": os.path.isdir(path)}


def collectives(fabric, out, model, optimizer):
    """How many collectives fabric_kit itself runs in one sharded save and one load of it (the collective log's
    count; torch.distributed.checkpoint's own are not in it)."""
    counts, path = {}, os.path.join(out, "counted")
    for op, run in (("save", fabric.save), ("load", fabric.load)):
        before = LOG.entered[0]
        run(path, {"model": model, "optimizer": optimizer, "step": STEPS})
        counts[op] = LOG.entered[0] - before
    return counts


def _flip_middle_byte(file):
    with open(file, "r+b") as f:
        f.seek(os.path.getsize(file) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


def _truncate(file):
    os.truncate(file, os.path.getsize(file) // 2)


DAMAGE = {  # name: (the file damaged, how)
    "__0_0.distcp": ("__0_0.distcp", _flip_middle_byte),
    "__1_0.distcp": ("__1_0.distcp", _flip_middle_byte),
    "truncated shard": ("__1_0.distcp", _truncate),
    "missing shard": ("__0_0.distcp", os.remove),
    "flipped byte in .metadata": (".metadata", _flip_middle_byte),
    "missing manifest": ("fabric_kit_manifest.json", os.remove),
}


def local_state(model, optimizer):
    """Copies of this rank's shards of the weights and of the optimizer's state."""
    tensors = [p.to_local() for p in model.parameters()]
    tensors += [v.to_local() if hasattr(v, "to_local") else v for s in optimizer.state.values() for v in s.values()]
    return [t.detach().clone() for t in tensors]


def damaged_shards(fabric, out, model, optimizer):
    """Load copies of the final checkpoint, each damaged in one way (`DAMAGE`), into the trained objects moved
    away from the checkpoint's values. The ranks split the checksumming (each verifies one of the two shard files),
    so for either file both ranks must raise; per case, the error each rank raised and whether the objects kept
    every value they had (nothing was half-loaded)."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    before = local_state(model, optimizer)
    errors = {}
    for case, (name, damage) in DAMAGE.items():
        path = os.path.join(out, f"damaged{case}")
        if fabric.is_global_zero:
            shutil.copytree(os.path.join(out, "final"), path)
            damage(os.path.join(path, name))
        fabric.barrier()
        try:
            fabric.load(path, {"model": model, "optimizer": optimizer})
            errors[case] = None
        except Exception as error:
            unchanged = all(torch.equal(a, b) for a, b in zip(before, local_state(model, optimizer), strict=True))
            errors[case] = (type(error).__name__, str(error), os.path.join(path, name), unchanged)
    fabric.load(os.path.join(out, "final"), {"model": model, "optimizer": optimizer})
    return errors


def bad_inputs(fabric):
    """Each misuse, before any model was set up, and then with a model set up."""
    errors = {}
    model = TinyTransformer()
    try:
        fabric.setup_optimizers(torch.optim.SGD(model.parameters(), lr=0.1))
    except ValueError as error:
        errors["optimizers_first"] = str(error)
    try:
        fabric.setup(TinyTransformer(), torch.optim.SGD(model.parameters(), lr=0.1))
    except ValueError as error:
        errors["setup_together"] = str(error)
    fabric.setup_module(model)
    try:
        fabric.setup_optimizers(torch.optim.SGD(TinyTransformer().parameters(), lr=0.1))
    except ValueError as error:
        errors["unsharded_optimizer"] = str(error)
    stepped = TinyTransformer()
    optimizer = torch.optim.AdamW(stepped.parameters())
    stepped(torch.zeros(1, SEQ, dtype=torch.long)).sum().backward()
    optimizer.step()
    try:
        fabric.setup(stepped, optimizer)
    except ValueError as error:
        errors["stepped_optimizer"] = str(error)
    return errors


def fsdp_scenarios(fabric, out):
    result = {"errors": bad_inputs(fabric)}
    torch.manual_seed(0)
    reference = TinyTransformer()
    if fabric.is_global_zero:
        torch.save(reference.state_dict(), os.path.join(out, "initial.pt"))
    fabric.barrier()

    # Uninterrupted run (normal init), also the reference for resuming, DDP parity and consolidation.
    torch.manual_seed(0)
    model, optimizer = model_and_optimizer(fabric)
    result["local_weight_shape"] = tuple(model.module.head.weight.to_local().shape)
    result["losses"], norms = train(fabric, model, optimizer, batches(STEPS))
    result["norm_types"] = sorted({type(n).__name__ for n in norms})
    result["norms"] = torch.stack(norms)
    fabric.save(os.path.join(out, "final"), {"model": model, "optimizer": optimizer, "step": STEPS})
    result["final_weights"] = full_weights(model)

    result["damaged"] = damaged_shards(fabric, out, model, optimizer)
    result["collectives"] = collectives(fabric, out, model, optimizer)

    # Joint setup, the converted loop's idiom: the optimizer built from the unsharded model is re-pointed.
    torch.manual_seed(0)
    plain = TinyTransformer()
    model, optimizer = fabric.setup(plain, torch.optim.AdamW(plain.parameters(), lr=1e-2))
    result["joint_losses"], _ = train(fabric, model, optimizer, batches(STEPS))

    for kind in ("sharded", "full"):
        result[kind] = resumed(fabric, out, kind)

    # Meta-device init: sharded before any storage exists, then loaded with the reference's initial weights.
    model, optimizer = model_and_optimizer(fabric, empty_init=True)
    result["meta_left"] = any(p.is_meta for p in model.parameters())
    result["meta_initialised_finite"] = all(torch.isfinite(p.to_local()).all() for p in model.parameters())
    result["meta_head_shard"] = model.module.head.weight.to_local().clone()
    fabric.load_raw(os.path.join(out, "initial.pt"), model)
    result["meta_losses"], _ = train(fabric, model, optimizer, batches(STEPS))
    result["no_backward_sync"] = no_backward_sync(fabric)
    result["step_methods"] = step_methods(fabric)
    return result


def no_backward_sync(fabric):
    """Accumulating two micro-batches with the first one unsynced gives the gradients of two synced backwards."""
    grads, reduced_after_first = [], []
    for skip_first_sync in (False, True):
        torch.manual_seed(0)
        model, _ = model_and_optimizer(fabric)
        x, y = next(batches(1))
        for i, micro in enumerate((slice(0, 2), slice(2, 4))):
            with fabric.no_backward_sync(model, enabled=skip_first_sync and i == 0):
                fabric.backward(F.cross_entropy(model(x[micro]).flatten(0, 1), y[micro].flatten()))
            if i == 0:
                reduced_after_first.append(all(p.grad is not None for p in model.parameters()))
        grads.append([p.grad.full_tensor() for p in model.parameters()])
    return {"max_difference": max((a - b).abs().max().item() for a, b in zip(*grads, strict=False)),
            "reduced_after_first": reduced_after_first}


def lightning_style_arguments(fabric):
    """Train with the strategy built from Lightning-style arguments (FSDP1 objects, enums): what FSDP applied."""
    torch.manual_seed(0)
    plain = TinyTransformer()
    model, optimizer = fabric.setup(plain, torch.optim.AdamW(plain.parameters(), lr=1e-2))
    dtypes = []
    model.module.head.register_forward_pre_hook(lambda module, args: dtypes.append(module.weight.dtype))
    losses, _ = train(fabric, model, optimizer, batches(4))
    mesh = fabric.strategy._mesh
    return {"losses": losses, "compute_dtypes": sorted({str(d) for d in dtypes}), "mesh_shape": tuple(mesh.shape),
            "mesh_dims": mesh.mesh_dim_names, "checkpointed": getattr(plain.blocks[0], "_fabric_kit_checkpointed",
                                                                      False)}


def run(name, out):
    strategy = name
    if strategy == "fsdp":
        strategy = FSDPStrategy(auto_wrap_policy={Block}, activation_checkpointing_policy={Block})
    elif strategy == "fsdp_lightning_arguments":
        from torch.distributed.fsdp import CPUOffload, MixedPrecision, ShardingStrategy
        strategy = FSDPStrategy(auto_wrap_policy={Block}, activation_checkpointing=Block, device_mesh=(1, 2),
                                sharding_strategy=ShardingStrategy.SHARD_GRAD_OP,
                                cpu_offload=CPUOffload(offload_params=True),
                                mixed_precision=MixedPrecision(param_dtype=torch.bfloat16, reduce_dtype=torch.float32))
    fabric = Fabric(accelerator="cpu", devices=2, strategy=strategy)
    fabric.launch()
    if isinstance(strategy, FSDPStrategy) and strategy.mixed_precision is not None:
        result = lightning_style_arguments(fabric)
    elif isinstance(strategy, FSDPStrategy):
        result = fsdp_scenarios(fabric, out)
    else:
        torch.manual_seed(0)
        model = TinyTransformer()
        model = fabric.setup_module(model)
        optimizer = fabric.setup_optimizers(torch.optim.AdamW(model.parameters(), lr=1e-2))
        result = {"losses": train(fabric, model, optimizer, batches(STEPS))[0]}
    return fabric.global_rank, result


if __name__ == "__main__":
    run_in_turn(sys.argv[1], sys.argv[2:], run)
