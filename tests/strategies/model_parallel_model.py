"""The tiny Llama-style transformer of the model-parallel tests (attention, SwiGLU MLP, RMSNorm), its
tensor-parallel plan and the copy task it learns; imported by the workers under fabric_kit and under Lightning."""
import torch
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module
from torch.nn import functional as F

VOCAB, DIM, HEADS, SEQ, GLOBAL_BATCH, STEPS, SPLIT = 8, 16, 2, 6, 8, 8, 4


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(DIM, DIM, bias=False) for _ in range(4))

    def forward(self, x):
        # -1 heads: under tensor parallelism each rank holds HEADS / tp of them.
        q, k, v = (w(x).unflatten(-1, (-1, DIM // HEADS)).transpose(1, 2) for w in (self.wq, self.wk, self.wv))
        return self.wo(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).flatten(2))


class SwiGLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.w1, self.w3 = nn.Linear(DIM, 2 * DIM, bias=False), nn.Linear(DIM, 2 * DIM, bias=False)
        self.w2 = nn.Linear(2 * DIM, DIM, bias=True)  # a bias: replicated over the TP ranks that split w2

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attention_norm, self.mlp_norm = nn.RMSNorm(DIM), nn.RMSNorm(DIM)
        self.attention, self.mlp = Attention(), SwiGLU()

    def forward(self, x):
        x = x + self.attention(self.attention_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.blocks = nn.Sequential(Block(), Block())
        self.norm, self.head = nn.RMSNorm(DIM), nn.Linear(DIM, VOCAB, bias=False)

    def forward(self, tokens):
        return self.head(self.norm(self.blocks(self.embed(tokens))))


TP_PLAN = {"attention.wq": ColwiseParallel(), "attention.wk": ColwiseParallel(), "attention.wv": ColwiseParallel(),
           "attention.wo": RowwiseParallel(), "mlp.w1": ColwiseParallel(), "mlp.w3": ColwiseParallel(),
           "mlp.w2": RowwiseParallel()}


def parallelize(model, device_mesh):
    """TP inside every block over "tensor_parallel"; FSDP2 per block and at the root over "data_parallel" when it
    has more than one rank."""
    tp, dp = device_mesh["tensor_parallel"], device_mesh["data_parallel"]
    for block in model.blocks:
        if tp.size() > 1:
            parallelize_module(block, tp, TP_PLAN)
        if dp.size() > 1:
            fully_shard(block, mesh=dp)
    if dp.size() > 1:
        fully_shard(model, mesh=dp)
    return model


def dataset():
    """GLOBAL_BATCH * STEPS sequences of a copy task (target = input)."""
    tokens = torch.randint(0, VOCAB, (GLOBAL_BATCH * STEPS, SEQ), generator=torch.Generator().manual_seed(1234))
    return torch.utils.data.TensorDataset(tokens)


def loss_of(model, tokens):
    return F.cross_entropy(model(tokens).flatten(0, 1), tokens.flatten())


def full_weights(model):
    """Every parameter gathered, on every rank (plain tensors as they are)."""
    return {name: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
            for name, p in model.named_parameters()}
