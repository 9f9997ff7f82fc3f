"""The three models `fabric estimate` is checked on (tests/test_memory_estimate.py), each a factory and a sample
input of one micro-batch: a tiny MLP, a CNN and a tiny transformer. Odd sizes (a vocabulary of 65, 10 classes)
leave shards of unequal size on 2 ranks, so that the estimate must follow each strategy's rule exactly."""
import torch
from torch import nn
from torch.nn import functional as F

VOCAB, WIDTH, HEADS, CONTEXT = 65, 32, 2, 16


def mlp():
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 10))


def mlp_input():
    return torch.randn(8, 32)


def cnn():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, 10))


def cnn_input():
    return torch.randn(4, 3, 16, 16)


class Block(nn.Module):
    """Pre-norm attention (written out: the fused kernel saves other tensors on each device) and an MLP."""

    def __init__(self):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
        self.qkv, self.proj = nn.Linear(WIDTH, 3 * WIDTH), nn.Linear(WIDTH, WIDTH)
        self.mlp = nn.Sequential(nn.Linear(WIDTH, 4 * WIDTH), nn.GELU(), nn.Linear(4 * WIDTH, WIDTH))

    def forward(self, x):
        batch, length, _ = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(batch, length, 3, HEADS, WIDTH // HEADS).transpose(1, 3).unbind(2)
        weights = F.softmax(q @ k.transpose(-2, -1) / (WIDTH // HEADS) ** 0.5, dim=-1)
        x = x + self.proj((weights @ v).transpose(1, 2).reshape(batch, length, WIDTH))
        return x + self.mlp(self.norm2(x))


class TinyTransformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, WIDTH)
        self.blocks = nn.ModuleList(Block() for _ in range(2))
        self.norm = nn.LayerNorm(WIDTH)
        self.head = nn.Linear(WIDTH, VOCAB)

    def forward(self, tokens):
        x = self.embedding(tokens)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def tiny_transformer():
    return TinyTransformer()


def transformer_input():
    return torch.randint(0, VOCAB, (4, CONTEXT))


MODELS = {"mlp": (mlp, mlp_input), "cnn": (cnn, cnn_input), "transformer": (tiny_transformer, transformer_input)}
