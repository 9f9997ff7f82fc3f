"""Train a tiny causal transformer with DeepSpeed ZeRO through Fabric, resuming from its own checkpoint.

    fabric run --devices 2 --strategy deepspeed_stage_2 examples/fabric/deepspeed_zero.py
    fabric run --devices 2 --strategy deepspeed_stage_3 examples/fabric/deepspeed_zero.py --steps 50
    python -m torch.distributed.run --nproc_per_node 2 examples/fabric/deepspeed_zero.py --strategy deepspeed_stage_1

Needs the extra: pip install 'fabric_kit[deepspeed]' --no-build-isolation. On CPU the processes talk over gloo;
the first run builds a small DeepSpeed C++ op (a minute or two), later runs reuse it.

The task is synthetic, so nothing is downloaded: each sequence counts up by a fixed stride modulo the vocabulary,
from a random start, and the model learns to predict the next token. With --checkpoint DIR the run resumes from
DIR when it exists and saves there at the end; the loop is the same for every ZeRO stage.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from fabric_kit import Fabric

VOCAB = 16
STRIDE = 3


class Block(nn.Module):
    """Pre-norm causal self-attention and MLP. Attention is written out (not nn.MultiheadAttention, whose forward
    reads its output projection's weight without calling it, which ZeRO stage 3 cannot see to gather)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: Tensor) -> Tensor:
        batch, length, width = x.shape
        qkv = self.qkv(self.norm1(x)).view(batch, length, 3, self.heads, width // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attended.transpose(1, 2).reshape(batch, length, width))
        return x + self.mlp(self.norm2(x))


class TinyLM(nn.Module):
    def __init__(self, width: int = 32, layers: int = 2, heads: int = 4, length: int = 16) -> None:
        super().__init__()
        self.tokens = nn.Embedding(VOCAB, width)
        self.positions = nn.Embedding(length, width)
        self.blocks = nn.Sequential(*(Block(width, heads) for _ in range(layers)))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, VOCAB)

    def forward(self, tokens: Tensor) -> Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        return self.head(self.norm(self.blocks(self.tokens(tokens) + self.positions(positions))))


def batch(step: int, rank: int, size: int = 8, length: int = 16) -> Tensor:
    """This rank's sequences for `step`: the same on every run, different on every rank."""
    generator = torch.Generator().manual_seed(1000 * step + rank)
    start = torch.randint(0, VOCAB, (size, 1), generator=generator)
    return (start + STRIDE * torch.arange(length)) % VOCAB


def next_token_loss(model: nn.Module, tokens: Tensor) -> Tensor:
    logits = model(tokens[:, :-1])
    return F.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategy", default=os.environ.get("FABRIC_KIT_STRATEGY", "deepspeed_stage_2"),
                        help="a deepspeed* strategy (`fabric run --strategy` sets it). Default: deepspeed_stage_2")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--checkpoint", help="directory to resume from (when it exists) and to save to at the end")
    args = parser.parse_args()

    fabric = Fabric(strategy=args.strategy)  # devices and precision: from `fabric run` / torchrun, else 1 CPU process
    fabric.launch()
    fabric.seed_everything(42)

    model = TinyLM(width=args.width, layers=args.layers)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    model, optimizer = fabric.setup(model, optimizer)  # builds the DeepSpeed engine around both
    state = {"model": model, "optimizer": optimizer, "step": 0}
    if args.checkpoint and Path(args.checkpoint).exists():
        fabric.load(args.checkpoint, state)
        fabric.print(f"resumed from {args.checkpoint} at step {state['step']}")

    for step in range(state["step"], state["step"] + args.steps):
        loss = next_token_loss(model, fabric.to_device(batch(step, fabric.global_rank)))
        fabric.backward(loss)  # the engine's backward
        optimizer.step()  # the engine's step: clipping and zeroing the gradients included
        if step % 10 == 0 or step == state["step"] + args.steps - 1:
            fabric.print(f"step {step:4d}  loss {fabric.all_reduce(loss.detach()).item():.4f}")

    state["step"] += args.steps
    if args.checkpoint:
        fabric.save(args.checkpoint, state)
        fabric.print(f"saved {args.checkpoint} at step {state['step']}")


if __name__ == "__main__":
    main()
