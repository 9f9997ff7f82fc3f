"""A training script for the multi-process tests in test_ddp.py (2 CPU processes, gloo).

    python ddp_worker.py SCENARIO[,SCENARIO...] STRATEGY OUT_DIR

Each rank runs the SCENARIOs in turn and saves what it observed to OUT_DIR/rank<r>.pt; the tests assert on those
files. The script is a plain user script: with strategy "ddp" this process becomes rank 0 and re-runs the same
command for rank 1; under torchrun it runs unchanged with every rank started by torchrun; "ddp_spawn"/"ddp_fork"
start the ranks with torch.multiprocessing and run `main` in each.
"""
import os
import random
import sys
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset, get_worker_info

from fabric_kit import Fabric


class BranchyNet(nn.Module):
    """`unused` never takes part in forward: plain DDP fails on it, find_unused_parameters=True copes."""

    def __init__(self):
        super().__init__()
        self.used = nn.Linear(4, 2)
        self.unused = nn.Linear(4, 2)

    def forward(self, x):
        return self.used(x)


class UnrebuildableLoader(DataLoader):
    """`flag` is an __init__ parameter that the instance does not keep, so the loader cannot be rebuilt."""

    def __init__(self, dataset, flag):
        super().__init__(dataset, batch_size=2)


class WorkerDraws(Dataset):
    """Sample i: [i, the id of the worker that loaded it, what torch, numpy and python drew there]."""

    def __len__(self):
        return 8

    def __getitem__(self, index):
        return torch.tensor([index, get_worker_info().id, torch.randint(2**31, ()).item(), np.random.randint(2**31),
                             random.randrange(2**31)])


def conv_net():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def global_batches(steps, size=8):
    generator = torch.Generator().manual_seed(1234)
    for _ in range(steps):
        yield torch.randn(size, 1, 8, 8, generator=generator), torch.randint(0, 3, (size,), generator=generator)


# -- scenarios: each returns a dict of observations for this rank ------------------------------------------------
def train(fabric, out_dir, model_class=nn.Linear):
    """A few steps on different data per rank; weights must end equal on every rank."""
    torch.manual_seed(0)
    model = model_class(4, 2) if model_class is nn.Linear else model_class()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = fabric.setup(model, optimizer)
    generator = torch.Generator().manual_seed(fabric.global_rank)
    for _ in range(3):
        loss = model(torch.randn(5, 4, generator=generator)).pow(2).mean()
        optimizer.zero_grad()
        fabric.backward(loss)
        optimizer.step()
    return {"weights": {k: v.clone() for k, v in model.state_dict().items()},
            "initial_weights": initial,
            "wrapper": type(model._forward_module).__name__,
            "find_unused_parameters": model._forward_module.find_unused_parameters}


def unused(fabric, out_dir):
    """Training a model whose forward skips a submodule."""
    return train(fabric, out_dir, model_class=BranchyNet)


def parity(fabric, out_dir, steps=200):
    """Each rank takes its half of every global batch; DDP averages the gradients of the per-rank mean losses."""
    torch.manual_seed(0)
    model = conv_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model, optimizer = fabric.setup(model, optimizer)
    half = slice(fabric.global_rank * 4, fabric.global_rank * 4 + 4)
    for x, y in global_batches(steps):
        loss = nn.functional.cross_entropy(model(x[half]), y[half])
        optimizer.zero_grad()
        fabric.backward(loss)
        optimizer.step()
    return {"weights": {k: v.clone() for k, v in model.state_dict().items()}}


def collectives(fabric, out_dir):
    rank = fabric.global_rank
    result = {}
    one = torch.tensor([rank + 1.0, 10.0 * (rank + 1)])  # rank 0: [1, 10], rank 1: [2, 20]
    for op in ("mean", "sum", "max", "min"):
        result[f"all_reduce_{op}"] = fabric.all_reduce(one, reduce_op=op)
    result["all_reduce_input_untouched"] = one.clone()
    result["all_reduce_nested"] = fabric.all_reduce(
        {"a": one, "b": [torch.tensor(rank * 2.0), (torch.tensor(rank),)], "c": rank + 1.0}, reduce_op="sum")
    result["all_reduce_float"] = fabric.all_reduce(rank + 1.0, reduce_op="sum")
    result["all_reduce_int_mean"] = fabric.all_reduce(rank, reduce_op="mean")
    result["all_gather"] = fabric.all_gather(torch.full((2, 3), float(rank)))
    result["all_gather_nested"] = fabric.all_gather({"x": torch.tensor([rank]), "y": [torch.tensor(rank * 1.5)]})
    result["all_gather_number"] = fabric.all_gather(rank + 7)
    sent = {"text": "from rank 0", "items": [1, 2.5, None]} if rank == 0 else {"text": f"from rank {rank}"}
    result["broadcast"] = fabric.broadcast(sent)
    result["broadcast_src1"] = fabric.broadcast(f"object of rank {rank}", src=1)

    # barrier: rank 0 writes a file after a pause; rank 1 must see it once both passed the barrier.
    barrier_file = os.path.join(out_dir, "barrier.txt")
    if rank == 0:
        time.sleep(0.5)
        with open(barrier_file, "w") as f:
            f.write("written before the barrier")
    fabric.barrier()
    result["after_barrier_sees_file"] = os.path.exists(barrier_file)

    # rank_zero_first: rank 1 enters the block only after rank 0 left it.
    first_file = os.path.join(out_dir, "rank_zero_first.txt")
    with fabric.rank_zero_first():
        if rank == 0:
            time.sleep(0.5)
            with open(first_file, "w") as f:
                f.write("rank 0 was here")
        else:
            result["rank_zero_first_seen"] = open(first_file).read() if os.path.exists(first_file) else None

    result["no_backward_sync"] = _no_backward_sync(fabric)
    result.update(_dataloaders(fabric))
    fabric.print(f"fabric.print on rank {rank}")
    return result


def _no_backward_sync(fabric):
    """Gradients of one step inside `no_backward_sync` (local) and one outside (averaged over ranks)."""
    torch.manual_seed(0)
    model = fabric.setup(nn.Linear(3, 1, bias=False))
    x = torch.full((2, 3), fabric.global_rank + 1.0)  # rank 0 sees ones, rank 1 sees twos
    local = {}
    with fabric.no_backward_sync(model):
        fabric.backward(model(x).sum())
    local["inside"] = model.module.weight.grad.clone()
    model.module.weight.grad = None
    fabric.backward(model(x).sum())
    local["outside"] = model.module.weight.grad.clone()
    local["expected_local"] = x.sum(0, keepdim=True)  # d(sum(x @ w.T)) / dw
    return local


def _dataloaders(fabric):
    out = {}
    data = TensorDataset(torch.arange(10))
    loader = fabric.setup_dataloaders(DataLoader(data, batch_size=2, shuffle=True))
    out["epochs"] = [[int(i) for (batch,) in loader for i in batch] for _ in range(2)]
    out["batch_devices"] = sorted({str(batch.device) for (batch,) in loader})
    uneven = fabric.setup_dataloaders(DataLoader(TensorDataset(torch.arange(11)), batch_size=3), even_shards=False)
    out["uneven"] = [int(i) for (batch,) in uneven for i in batch]
    even = fabric.setup_dataloaders(DataLoader(TensorDataset(torch.arange(11)), batch_size=3))
    out["even"] = [int(i) for (batch,) in even for i in batch]
    try:
        fabric.setup_dataloaders(UnrebuildableLoader(data, flag=True))
        out["unrebuildable_error"] = None
    except ValueError as error:
        out["unrebuildable_error"] = str(error)
    return out


def worker_seeds(fabric, out_dir):
    """What 2 dataloader workers per rank draw after `seed_everything(workers=True)`, twice from the same seed."""
    runs = []
    for _ in range(2):
        fabric.seed_everything(7, workers=True)
        loader = fabric.setup_dataloaders(DataLoader(WorkerDraws(), batch_size=2, num_workers=2))
        runs.append(torch.cat(list(loader)))
    return {"worker_draws": runs}


SCENARIOS = {"train": train, "unused": unused, "parity": parity, "collectives": collectives,
             "worker_seeds": worker_seeds}


def main(fabric, scenarios, out_dir):
    again = fabric.launch()  # launch() again inside a launched process: harmless, starts nothing
    result = {}
    for scenario in scenarios.split(","):
        result.update(SCENARIOS[scenario](fabric, out_dir))
    launcher = fabric.strategy.launcher
    result.update(
        second_launch_returned=again,
        rank=fabric.global_rank, local_rank=fabric.local_rank, world_size=fabric.world_size,
        is_global_zero=fabric.is_global_zero, device=str(fabric.device), pid=os.getpid(),
        children=len(launcher.children) if hasattr(launcher, "children") else None,
        environment=type(fabric.strategy.cluster_environment).__name__,
    )
    torch.save(result, os.path.join(out_dir, f"rank{fabric.global_rank}.pt"))
    # Larger than a pipe's buffer, and a tensor: `launch` must still hand it to the launching process.
    return {"message": f"rank {fabric.global_rank} done", "tensor": torch.arange(200_000)}


def describe(returned):
    return f"{returned['message']}, tensor intact: {torch.equal(returned['tensor'], torch.arange(200_000))}"


if __name__ == "__main__":
    scenarios, strategy, out_dir = sys.argv[1:4]
    fabric = Fabric(accelerator="cpu", devices=2, strategy=strategy)
    if strategy in ("ddp", "ddp_find_unused_parameters_true"):  # the script re-run launcher
        fabric.launch()  # re-runs this script for rank 1 (or, under torchrun, only joins the process group)
        returned = main(fabric, scenarios, out_dir)
    else:
        returned = fabric.launch(main, scenarios, out_dir)  # runs `main` in each started process
    with open(os.path.join(out_dir, f"returned_pid{os.getpid()}.txt"), "w") as f:
        f.write(describe(returned))
