"""One training script for Lightning's ModelParallelStrategy and fabric_kit's: only the import lines differ.

    python model_parallel_parity.py lightning|fabric_kit OUT_DIR

Two processes: TP = 2 ("auto" sizes: one node, so the whole world is one tensor-parallel group), float32. Without
gradient clipping: Lightning's cannot clip a model whose gradients mix DTensors and plain tensors (torch's
`clip_grad_norm_` refuses them), fabric_kit's can. Each rank saves the gathered weights to OUT_DIR/rank<r>.pt.
test_model_parallel.py compares the two through model_parallel_worker.py, which runs `train` under each Fabric,
built as `main` builds it, in the processes of its other 2-process scenarios.
"""
import os
import sys

import torch

if sys.argv[1] == "lightning":
    from lightning.fabric import Fabric
    from lightning.fabric.strategies import ModelParallelStrategy
else:
    from fabric_kit import Fabric
    from fabric_kit.strategies import ModelParallelStrategy

from tests.strategies.model_parallel_model import (  # noqa: E402
    GLOBAL_BATCH,
    STEPS,
    Transformer,
    dataset,
    full_weights,
    loss_of,
    parallelize,
)


def train(fabric):
    """The gathered weights after STEPS steps."""
    torch.manual_seed(0)
    model = Transformer()
    raw = model
    model = fabric.setup_module(model)
    optimizer = fabric.setup_optimizers(torch.optim.AdamW(model.parameters(), lr=1e-2))
    tokens = dataset().tensors[0]
    sampler = fabric.strategy.distributed_sampler_kwargs
    per_rank = GLOBAL_BATCH // sampler["num_replicas"]
    for step in range(STEPS):
        start = step * GLOBAL_BATCH + sampler["rank"] * per_rank
        loss = loss_of(model, tokens[start:start + per_rank])
        optimizer.zero_grad()
        fabric.backward(loss)
        optimizer.step()
    return full_weights(raw)


def main():
    fabric = Fabric(accelerator="cpu", devices=2, strategy=ModelParallelStrategy(parallelize))
    fabric.launch()
    torch.save(train(fabric), os.path.join(sys.argv[2], f"rank{fabric.global_rank}.pt"))


if __name__ == "__main__":
    main()
