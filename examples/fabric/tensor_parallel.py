"""Train a small Llama-style transformer with FSDP2 x tensor parallelism over a named 2-D device mesh.

    fabric run --devices 4 examples/fabric/tensor_parallel.py --tp 2
    python -m torch.distributed.run --nproc_per_node 4 examples/fabric/tensor_parallel.py --tp 2
    fabric run --accelerator cuda --devices 8 --precision bf16-mixed examples/fabric/tensor_parallel.py \\
        --tp 4 --dim 2048 --depth 16 --heads 16 --seq 1024 --empty-init

The mesh is (data_parallel, tensor_parallel) = (world size / --tp, --tp). Inside each tensor-parallel group every
block's attention heads and MLP columns are split over the ranks (column-wise in, row-wise out: one all-reduce per
sub-layer), the embedding by vocabulary rows and the output head by vocabulary columns; the loss is computed on the
sharded logits without gathering them (loss parallel). FSDP2 then shards every block over the data-parallel
dimension. The ranks of one tensor-parallel group see the same batches (`setup_dataloaders` shards by the
data-parallel rank). The task is generated: random tokens followed by the same tokens again; the model learns to
copy (the loss covers the second half). `--empty-init` creates the model on the meta device: each rank allocates
and initialises only its shards. At the end a sharded checkpoint is written, loadable under any other layout.
"""
from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    RowwiseParallel,
    loss_parallel,
    parallelize_module,
)
from torch.nn import functional as F

from fabric_kit import Fabric
from fabric_kit.strategies import ModelParallelStrategy


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.head_dim = dim // heads
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(dim, dim, bias=False) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # -1: under tensor parallelism each rank holds only its share of the heads.
        q, k, v = (w(x).unflatten(-1, (-1, self.head_dim)).transpose(1, 2) for w in (self.wq, self.wk, self.wv))
        return self.wo(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).flatten(2))


class FeedForward(nn.Module):
    """SwiGLU: silu(x W1) * (x W3), then W2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1, self.w3 = nn.Linear(dim, hidden, bias=False), nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attention_norm, self.ffn_norm = nn.RMSNorm(dim), nn.RMSNorm(dim)
        self.attention, self.feed_forward = Attention(dim, heads), FeedForward(dim, 4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x))
        return x + self.feed_forward(self.ffn_norm(x))


class Transformer(nn.Module):
    def __init__(self, vocab: int, dim: int, depth: int, heads: int, seq: int) -> None:
        super().__init__()
        self.embed, self.position = nn.Embedding(vocab, dim), nn.Embedding(seq, dim)
        self.blocks = nn.Sequential(*(Block(dim, heads) for _ in range(depth)))
        self.norm, self.head = nn.RMSNorm(dim), nn.Linear(dim, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        return self.head(self.norm(self.blocks(self.embed(tokens) + self.position(positions))))


BLOCK_PLAN = {"attention.wq": ColwiseParallel(), "attention.wk": ColwiseParallel(),
              "attention.wv": ColwiseParallel(), "attention.wo": RowwiseParallel(),
              "feed_forward.w1": ColwiseParallel(), "feed_forward.w3": ColwiseParallel(),
              "feed_forward.w2": RowwiseParallel()}


def parallelize(model: Transformer, device_mesh: DeviceMesh) -> Transformer:
    """What `fabric.setup_module(model)` applies: TP over "tensor_parallel", then FSDP2 over "data_parallel"."""
    tp, dp = device_mesh["tensor_parallel"], device_mesh["data_parallel"]
    if tp.size() > 1:
        parallelize_module(model, tp, {
            "embed": RowwiseParallel(input_layouts=Replicate()),  # vocabulary rows split; output all-reduced
            # Logits stay split by vocabulary (Shard(-1)) as a DTensor, for loss_parallel.
            "head": ColwiseParallel(output_layouts=Shard(-1), use_local_output=False),
        })
        for block in model.blocks:
            parallelize_module(block, tp, BLOCK_PLAN)
    for block in model.blocks:
        fully_shard(block, mesh=dp)
    fully_shard(model, mesh=dp)
    return model


def copy_batch(batch_size: int, seq: int, vocab: int, generator: torch.Generator) -> torch.Tensor:
    half = torch.randint(0, vocab, (batch_size, seq // 2), generator=generator)
    return torch.cat([half, half], dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tp", type=int, default=2, help="tensor-parallel size (divides the world size and heads)")
    parser.add_argument("--vocab", type=int, default=16)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--seq", type=int, default=16, help="sequence length (even)")
    parser.add_argument("--batch-size", type=int, default=16, help="per data-parallel rank")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--empty-init", action="store_true", help="create the model on the meta device")
    parser.add_argument("--checkpoint", default="runs/tensor_parallel", help="sharded checkpoint directory")
    args = parser.parse_args()

    # Devices and precision come from `fabric run` or torchrun; the parallelism is chosen here.
    fabric = Fabric(strategy=ModelParallelStrategy(parallelize, tensor_parallel_size=args.tp))
    fabric.launch()
    mesh = fabric.strategy.device_mesh
    fabric.print(f"mesh {dict(zip(mesh.mesh_dim_names, mesh.shape, strict=True))} on {fabric.world_size} processes")
    fabric.seed_everything(42)
    with fabric.init_module(empty_init=args.empty_init):
        model = Transformer(args.vocab, args.dim, args.depth, args.heads, args.seq)
    model = fabric.setup_module(model)  # parallelizes it; the optimizer must see the DTensor parameters
    optimizer = fabric.setup_optimizers(torch.optim.AdamW(model.parameters(), lr=args.lr))
    parameters = sum(p.numel() for p in model.parameters())  # numel of a DTensor is its full size
    fabric.print(f"{parameters / 1e6:.2f}M parameters")

    # One stream of data per data-parallel rank: the ranks of a tensor-parallel group draw the same batches.
    generator = torch.Generator().manual_seed(fabric.strategy.distributed_sampler_kwargs["rank"])
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        tokens = fabric.to_device(copy_batch(args.batch_size, args.seq, args.vocab, generator))
        inputs, targets = tokens, torch.roll(tokens, -1, dims=1)
        targets[:, : args.seq // 2 - 1] = -100  # only the repeated half is predictable
        targets[:, -1] = -100
        with loss_parallel():  # cross-entropy over vocabulary shards, and its backward
            loss = F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten(), ignore_index=-100)
            optimizer.zero_grad()
            fabric.backward(loss)
        fabric.clip_gradients(model, optimizer, max_norm=1.0)
        optimizer.step()
        if step % 20 == 0 or step == args.steps:
            loss = fabric.all_reduce(loss.detach().full_tensor() if hasattr(loss, "full_tensor") else loss.detach())
            fabric.print(f"step {step}  loss {loss.item():.4f}  (chance {math.log(args.vocab):.2f})  "
                         f"{(time.perf_counter() - start) / step * 1000:.0f} ms/step")

    fabric.save(args.checkpoint, {"model": model, "optimizer": optimizer, "step": args.steps})
    fabric.print(f"sharded checkpoint written to {args.checkpoint}")


if __name__ == "__main__":
    main()
