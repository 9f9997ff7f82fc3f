"""Train a small decoder-only transformer with FSDP, each process holding a shard of every weight.

    fabric run --devices 2 --strategy fsdp examples/fabric/fsdp_transformer.py
    python -m torch.distributed.run --nproc_per_node 2 examples/fabric/fsdp_transformer.py
    fabric run --accelerator cuda --devices 8 --strategy fsdp --precision bf16-mixed \\
        examples/fabric/fsdp_transformer.py --dim 2048 --depth 24 --heads 16 --seq 1024 --empty-init

The task is generated, so nothing is downloaded: each sequence is random tokens followed by the same tokens again,
and the model learns to copy the first half by attending back to it (the loss covers the second half only).
Every transformer block is its own shard group (gathered for its forward and backward, then freed) and recomputes
its activations in backward. `--empty-init` creates the model on the meta device, so a model too large for one
process materialises shard by shard. At the end a sharded checkpoint is written (every rank its shards); turn it
into one file with `fabric consolidate CHECKPOINT --output model.pt`.
"""
from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn
from torch.nn import functional as F

from fabric_kit import Fabric
from fabric_kit.strategies.fsdp import FSDPStrategy


class Block(nn.Module):
    """Pre-norm attention and MLP; causal, no buffers (so it can be created on the meta device)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.norm1(x)).unflatten(-1, (3, self.heads, -1)).unbind(2)
        attended = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                  is_causal=True)
        x = x + self.proj(attended.transpose(1, 2).flatten(2))
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    def __init__(self, vocab: int, dim: int, depth: int, heads: int, seq: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.position = nn.Embedding(seq, dim)
        self.blocks = nn.Sequential(*(Block(dim, heads) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        return self.head(self.norm(self.blocks(self.embed(tokens) + self.position(positions))))


def copy_batch(batch_size: int, seq: int, vocab: int, generator: torch.Generator) -> torch.Tensor:
    half = torch.randint(0, vocab, (batch_size, seq // 2), generator=generator)
    return torch.cat([half, half], dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=16)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--seq", type=int, default=16, help="sequence length (even)")
    parser.add_argument("--batch-size", type=int, default=16, help="per process")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--empty-init", action="store_true", help="create the model on the meta device")
    parser.add_argument("--checkpoint", default="runs/fsdp_transformer", help="sharded checkpoint directory")
    args = parser.parse_args()

    # Devices, precision (and --strategy fsdp) come from `fabric run` or torchrun; the policies are set here.
    fabric = Fabric(strategy=FSDPStrategy(auto_wrap_policy={Block}, activation_checkpointing_policy={Block}))
    fabric.launch()
    fabric.seed_everything(42)
    with fabric.init_module(empty_init=args.empty_init):
        model = Transformer(args.vocab, args.dim, args.depth, args.heads, args.seq)
    model = fabric.setup_module(model)  # shards it; the optimizer must see the sharded parameters
    optimizer = fabric.setup_optimizers(torch.optim.AdamW(model.parameters(), lr=args.lr))
    parameters = sum(p.numel() for p in model.parameters())  # numel of a sharded parameter is its full size
    fabric.print(f"{parameters / 1e6:.2f}M parameters on {fabric.world_size} processes")

    generator = torch.Generator().manual_seed(fabric.global_rank)  # different data on every rank
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        tokens = fabric.to_device(copy_batch(args.batch_size, args.seq, args.vocab, generator))
        logits = model(tokens[:, :-1])
        second_half = slice(args.seq // 2 - 1, None)  # predictions of the repeated tokens
        loss = F.cross_entropy(logits[:, second_half].flatten(0, 1), tokens[:, second_half.start + 1:].flatten())
        optimizer.zero_grad()
        fabric.backward(loss)
        fabric.clip_gradients(model, optimizer, max_norm=1.0)
        optimizer.step()
        if step % 20 == 0 or step == args.steps:
            loss = fabric.all_reduce(loss.detach())
            fabric.print(f"step {step}  loss {loss.item():.4f}  (chance {math.log(args.vocab):.2f})  "
                         f"{(time.perf_counter() - start) / step * 1000:.0f} ms/step")

    fabric.save(args.checkpoint, {"model": model, "optimizer": optimizer, "step": args.steps})
    fabric.print(f"sharded checkpoint written to {args.checkpoint}")


if __name__ == "__main__":
    main()
