"""Run by test_accumulation.py under `torchrun --nproc_per_node 2 accumulation_worker.py OUT_DIR`: every case of
`fabric.accumulate` and of the Trainer's accumulation in one launch. Each rank saves what it observed to
OUT_DIR/rank{r}.pt; the test asserts on it.

The micro-batches hold different numbers of items on each rank and at each step (rank 0: 3, 1, 4 | 2, 5; rank 1:
1, 6, 2 | 3, 1 with a window of 3, so the second window is cut short by the end of the data). Every rank can build
every rank's data (`micro_batch(rank, index)`), so it computes the reference gradient of the global batch itself.
"""
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.utils.data import DataLoader

import loops as L
from fabric_kit import Fabric

SIZES = {0: [3, 1, 4, 2, 5], 1: [1, 6, 2, 3, 1]}
WINDOW = 3
LR = 0.1


def micro_batch(rank: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(100 * rank + index)
    size = SIZES[rank][index]
    return torch.randn(size, 4, generator=generator), torch.randn(size, 1, generator=generator)


def windows() -> list[list[int]]:
    indices = list(range(len(SIZES[0])))
    return [indices[start:start + WINDOW] for start in range(0, len(indices), WINDOW)]


def network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def mean_loss(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    dtype = next(model.parameters()).dtype
    x = torch.cat([b[0] for b in batches]).to(dtype)
    y = torch.cat([b[1] for b in batches]).to(dtype)
    return nn.functional.mse_loss(model(x), y)


def reference_gradients(model: nn.Module) -> list[list[torch.Tensor]]:
    """Per window, the gradient of the mean loss over every item of both ranks' micro-batches: one large batch."""
    result = []
    for window in windows():
        model.zero_grad()
        mean_loss(model, [micro_batch(rank, i) for rank in SIZES for i in window]).backward()
        result.append([p.grad.clone() for p in model.parameters()])
    return result


def fsdp_case() -> dict:
    """Item-weighted accumulation under FSDP2 (`set_requires_gradient_sync`): the full gradient equals the large
    batch's, and the gradient reductions (every torch.distributed call that reduces) happen once per window."""
    fabric = Fabric(accelerator="cpu", devices=2, strategy="fsdp")
    fabric.launch()
    rank = fabric.global_rank
    model = fabric.setup_module(network())
    reductions = [0]
    originals = {name: getattr(dist, name) for name in ("all_reduce", "reduce_scatter_single",
                                                        "reduce_scatter_tensor") if hasattr(dist, name)}

    def counting(original):
        def collective(*args, **kwargs):
            reductions[0] += 1
            return original(*args, **kwargs)
        return collective

    for name, original in originals.items():
        setattr(dist, name, counting(original))
    try:
        x, y = micro_batch(rank, 0)
        fabric.backward(nn.functional.mse_loss(model(x), y))
        out = {"reductions_per_sync": reductions[0]}
        reductions[0] = 0
        model.zero_grad()
        grads = []
        batches = [micro_batch(rank, i) for i in range(len(SIZES[rank]))]
        for micro, (x, y) in fabric.accumulate(model, batches, WINDOW, num_items=lambda batch: batch[0].shape[0]):
            with micro:
                fabric.backward(micro.scale(nn.functional.mse_loss(model(x), y)))
            if micro.is_last:
                grads.append([p.grad.full_tensor().clone() for p in model.parameters()])
                model.zero_grad()
    finally:
        for name, original in originals.items():
            setattr(dist, name, original)
    out["grads"], out["reductions"] = grads, reductions[0]
    out["reference"] = reference_gradients(network())
    return out


class Counter:
    """Counts DDP's gradient all-reduces (a comm hook, called once per bucket) and every torch.distributed.all_reduce
    call (the hook's own, and the item counts)."""

    def __init__(self) -> None:
        self.buckets = 0
        self.all_reduces = 0
        self._all_reduce = dist.all_reduce

    def hook(self, state, bucket):
        self.buckets += 1
        return default_hooks.allreduce_hook(state, bucket)

    def counting_all_reduce(self, *args, **kwargs):
        self.all_reduces += 1
        return self._all_reduce(*args, **kwargs)


def fabric_cases(fabric: Fabric) -> dict:
    rank = fabric.global_rank
    out = {}
    model = fabric.setup(network().double())
    counter = Counter()
    model._forward_module.register_comm_hook(None, counter.hook)
    # one plain backward: how many buckets DDP all-reduces for this model
    x, y = micro_batch(rank, 0)
    fabric.backward(nn.functional.mse_loss(model(x.double()), y.double()))
    out["buckets_per_sync"], counter.buckets = counter.buckets, 0
    batches = [tuple(t.double() for t in micro_batch(rank, i)) for i in range(len(SIZES[rank]))]
    for mode, num_items in (("items", lambda batch: batch[0].shape[0]), ("steps", None)):
        model.zero_grad()
        grads, micro_seen = [], []
        dist.all_reduce = counter.counting_all_reduce
        try:
            for micro, (x, y) in fabric.accumulate(model, batches, WINDOW, num_items=num_items):
                with micro:
                    fabric.backward(micro.scale(nn.functional.mse_loss(model(x), y)))
                micro_seen.append((micro.index, micro.size, micro.sync, micro.num_items, micro.window_items))
                if micro.is_last:
                    grads.append([p.grad.clone() for p in model.module.parameters()])
                    model.zero_grad()
        finally:
            dist.all_reduce = counter._all_reduce
        out[mode] = {"grads": grads, "micro": micro_seen, "gradient_syncs": counter.buckets,
                     "all_reduces": counter.all_reduces}
        counter.buckets = counter.all_reduces = 0
    out["reference"] = reference_gradients(network().double())
    return out


def accumulating(trainer_module):
    """The same LightningModule for either Trainer (`trainer_module`: loops or lightning.pytorch)."""

    class Accumulating(trainer_module.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = network()
            self.seen: list[tuple[int, torch.Tensor, torch.Tensor]] = []

        def training_step(self, batch, batch_idx):
            x, y = batch
            self.seen.append((batch_idx, x.clone(), y.clone()))
            return nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=LR)

    return Accumulating()


def trained_weights(trainer_module, num_items=None) -> tuple[list[torch.Tensor], list]:
    """One epoch over this rank's micro-batches, as they are (no distributed sampler: each rank's own list)."""
    module = accumulating(trainer_module)
    extra = {} if num_items is None else {"accumulate_num_items": num_items}
    trainer = trainer_module.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, logger=False,
                                     enable_checkpointing=False, enable_progress_bar=False,
                                     enable_model_summary=False, accumulate_grad_batches=WINDOW,
                                     use_distributed_sampler=False, **extra)
    rank = dist.get_rank()
    data = [micro_batch(rank, index) for index in range(len(SIZES[rank]))]
    trainer.fit(module, DataLoader(data, batch_size=None))
    return [p.detach().clone() for p in module.parameters()], module.seen


def reference_item_weighted(seen_by_rank: list[list]) -> list[torch.Tensor]:
    """SGD steps on the mean loss over every item of each window of what both ranks trained on."""
    model = network()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    batches = {(rank, idx): (x, y) for rank, seen in enumerate(seen_by_rank) for idx, x, y in seen}
    for window in windows():
        optimizer.zero_grad()
        mean_loss(model, [batches[(rank, i)] for rank in range(2) for i in window]).backward()
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


def trainer_cases() -> dict:
    import lightning.pytorch as pl

    out = {}
    out["loops_steps"], _ = trained_weights(L)
    out["lightning_steps"], lightning_seen = trained_weights(pl)
    out["lightning_counts"] = [x.shape[0] for _, x, _ in lightning_seen]
    out["loops_items"], seen = trained_weights(L, num_items=lambda batch: batch[0].shape[0])
    seen_by_rank: list = [None, None]
    dist.all_gather_object(seen_by_rank, seen)
    out["reference_items"] = reference_item_weighted(seen_by_rank)
    out["item_counts_seen"] = [[x.shape[0] for _, x, _ in s] for s in seen_by_rank]
    return out


def main(out_dir: str) -> None:
    fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp")
    fabric.launch()
    result = {"rank": fabric.global_rank, **fabric_cases(fabric), **trainer_cases(), "fsdp": fsdp_case()}
    torch.save(result, Path(out_dir) / f"rank{fabric.global_rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1])
