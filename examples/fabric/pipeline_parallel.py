"""Train a small Llama-style transformer with pipeline parallelism, composed with FSDP2 or tensor parallelism.

    fabric run --devices 4 examples/fabric/pipeline_parallel.py --pp 2
    fabric run --devices 4 examples/fabric/pipeline_parallel.py --pp 2 --tp 2 --schedule gpipe
    fabric run --devices 4 examples/fabric/pipeline_parallel.py --pp 2 --schedule interleaved_1f1b --depth 4
    fabric run --accelerator cuda --devices 8 --precision bf16-mixed examples/fabric/pipeline_parallel.py \\
        --pp 4 --tp 2 --dim 2048 --depth 16 --heads 16 --seq 1024 --microbatches 8 --empty-init

The mesh is (pipeline_parallel, data_parallel, tensor_parallel) = (--pp, world / (--pp * --tp), --tp). The blocks
are cut into --pp stages (twice as many with interleaved 1F1B, two per rank): the first stage also holds the
embeddings, the last the final norm and the output head. Each rank keeps only its own stage(s): with --empty-init
the model is created on the meta device and a rank allocates only what it holds. Inside a stage, tensor
parallelism splits the blocks' heads and MLP columns over "tensor_parallel" and FSDP2 shards them over
"data_parallel". Compared with the other examples, one line of the loop changes: the forward, the loss and the
backward are one call, `fabric.forward_backward(model, inputs, targets, loss_fn=...)`, because the schedule runs
the micro-batches' forward and backward passes itself; it returns the batch's loss on every rank. The task is
generated: random tokens followed by the same tokens again; the model learns to copy (the loss covers the second
half). At the end a sharded checkpoint is written, loadable under any other layout.
"""
from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor.parallel import parallelize_module
from torch.nn import functional as F

from fabric_kit import Fabric
from fabric_kit.strategies import ModelParallelStrategy

# The tensor-parallel example's blocks, TP plan and data (this folder is on the path of a script run from it).
from tensor_parallel import BLOCK_PLAN, Block, copy_batch  # isort: skip


class Embeddings(nn.Module):
    """Token and position embeddings in one module: a stage without it gets an identity in its place, so the
    model's forward must call each top-level module on the running activation only."""

    def __init__(self, vocab: int, dim: int, seq: int) -> None:
        super().__init__()
        self.tokens, self.positions = nn.Embedding(vocab, dim), nn.Embedding(seq, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.tokens(tokens) + self.positions(torch.arange(tokens.shape[1], device=tokens.device))


class Transformer(nn.Module):
    def __init__(self, vocab: int, dim: int, depth: int, heads: int, seq: int) -> None:
        super().__init__()
        self.embed = Embeddings(vocab, dim, seq)
        self.blocks = nn.Sequential(*(Block(dim, heads) for _ in range(depth)))
        self.norm, self.head = nn.RMSNorm(dim), nn.Linear(dim, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.blocks(self.embed(tokens))))


def parallelize(stage: Transformer, device_mesh: DeviceMesh) -> Transformer:
    """Applied by `fabric.setup_module(model)` to each stage this rank runs (the blocks of other stages are gone):
    TP over "tensor_parallel", then FSDP2 over "data_parallel"."""
    tp, dp = device_mesh["tensor_parallel"], device_mesh["data_parallel"]
    for block in stage.blocks:
        if tp.size() > 1:
            parallelize_module(block, tp, BLOCK_PLAN)
        if dp.size() > 1:
            fully_shard(block, mesh=dp)
    if dp.size() > 1:
        fully_shard(stage, mesh=dp)
    return stage


def split_points(depth: int, stages: int) -> list[str]:
    """Where stages 1.. begin: the blocks spread evenly."""
    if depth % stages:
        raise SystemExit(f"--depth {depth} does not split into {stages} stages of equal blocks")
    return [f"blocks.{depth // stages * stage}" for stage in range(1, stages)]


def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pp", type=int, default=2, help="pipeline-parallel size (divides the world size)")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel size inside each stage")
    parser.add_argument("--schedule", default="1f1b", choices=["gpipe", "1f1b", "interleaved_1f1b"])
    parser.add_argument("--microbatches", type=int, default=4, help="per batch (divides --batch-size)")
    parser.add_argument("--vocab", type=int, default=16)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--seq", type=int, default=16, help="sequence length (even)")
    parser.add_argument("--batch-size", type=int, default=16, help="per data-parallel rank")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--empty-init", action="store_true", help="create the model on the meta device")
    parser.add_argument("--checkpoint", default="runs/pipeline_parallel", help="sharded checkpoint directory")
    args = parser.parse_args()

    # Devices and precision come from `fabric run` or torchrun; the parallelism is chosen here.
    stages = args.pp * (2 if args.schedule == "interleaved_1f1b" else 1)
    strategy = ModelParallelStrategy(parallelize, tensor_parallel_size=args.tp, pipeline_parallel_size=args.pp,
                                     pipeline_split=split_points(args.depth, stages),
                                     pipeline_schedule=args.schedule, pipeline_microbatches=args.microbatches)
    fabric = Fabric(strategy=strategy)
    fabric.launch()
    mesh = fabric.strategy.device_mesh
    fabric.print(f"mesh {dict(zip(mesh.mesh_dim_names, mesh.shape, strict=True))} on {fabric.world_size} processes, "
                 f"{stages} stages, schedule {args.schedule}")
    fabric.seed_everything(42)
    with fabric.init_module(empty_init=args.empty_init):
        model = Transformer(args.vocab, args.dim, args.depth, args.heads, args.seq)
    model = fabric.setup_module(model)  # keeps this rank's stage(s) and parallelizes them
    optimizer = fabric.setup_optimizers(torch.optim.AdamW(model.parameters(), lr=args.lr))
    held = sum(p.numel() for p in model.parameters())  # this stage's (a DTensor counts its full size)
    fabric.print(f"{held / 1e6:.3f}M parameters in the first stage(s)")

    # One stream of data per data-parallel rank: the ranks of one pipeline (and TP group) draw the same batches.
    generator = torch.Generator().manual_seed(fabric.strategy.distributed_sampler_kwargs["rank"])
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        tokens = fabric.to_device(copy_batch(args.batch_size, args.seq, args.vocab, generator))
        inputs, targets = tokens, torch.roll(tokens, -1, dims=1)
        targets[:, : args.seq // 2 - 1] = -100  # only the repeated half is predictable
        targets[:, -1] = -100
        optimizer.zero_grad()
        loss = fabric.forward_backward(model, inputs, targets, loss_fn=loss_fn)  # every micro-batch, both ways
        fabric.clip_gradients(model, optimizer, max_norm=1.0)  # the norm over all stages
        optimizer.step()
        if step % 20 == 0 or step == args.steps:
            loss = fabric.all_reduce(loss)  # the mean over the data-parallel ranks' batches
            fabric.print(f"step {step}  loss {loss.item():.4f}  (chance {math.log(args.vocab):.2f})  "
                         f"{(time.perf_counter() - start) / step * 1000:.0f} ms/step")

    fabric.save(args.checkpoint, {"model": model, "optimizer": optimizer, "step": args.steps})
    fabric.print(f"sharded checkpoint written to {args.checkpoint}")


if __name__ == "__main__":
    main()
