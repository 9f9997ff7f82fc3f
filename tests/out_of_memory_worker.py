"""Run by test_out_of_memory.py (`torchrun --nproc_per_node 2 out_of_memory_worker.py OUT_DIR`): every OOM case on
2 gloo processes in one launch. Rank 1 alone raises `torch.OutOfMemoryError` when a training batch holds more than
LIMIT samples (rank 0 never runs out), in the model's forward, as a real one would: inside DDP's forward, whose own
collectives (bucket rebuilds, buffer broadcasts) every rank then ran alike. Each rank saves what it observed to
OUT_DIR/rank{r}.pt.

Fabric: `find_executable_batch_size` on a DDP model (the failure on rank 1 in its forward reaches rank 0 in its
`fabric.backward`), the same training at the size found from the start, the floor error, and an attempt without any
backward (the ranks learn it at the attempt's end); the search and the training from the start again under FSDP
(each Linear a shard group of its own, whose all-gather rank 0 reaches after rank 1 failed; also with the model
set up inside each attempt) and DeepSpeed ZeRO-2.
Trainer: the BatchSizeFinder ("power", keep_global_batch) and Tuner.scale_batch_size ("binsearch"), the run with
the size and accumulation found from the start, on_oom="reduce", and the finder's floor error.
"""
import importlib.util
import sys
from pathlib import Path

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from torch.utils.data import DataLoader

import loops as L
from fabric_kit import Fabric
from fabric_kit.strategies import FSDPStrategy
from fabric_kit.utilities import find_executable_batch_size
from loops.callbacks import BatchSizeFinder
from loops.tuner import Tuner
from tests.helpers.loops import Regression, dataset

LIMIT = 2
STEPS = 3


def out_of_memory_on_rank_1(rank: int, rows: int, tried: list[int]) -> None:
    tried.append(rows)
    if rank == 1 and rows > LIMIT:
        raise torch.OutOfMemoryError(f"out of memory: a batch of {rows} is above {LIMIT} (injected on rank 1)")


class Capped(nn.Module):
    def __init__(self, rank: int, tried: list[int]) -> None:
        super().__init__()
        self.rank, self.tried = rank, tried
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))

    def forward(self, x):
        out_of_memory_on_rank_1(self.rank, x.shape[0], self.tried)
        return self.net(x)


def fabric_setup(fabric: Fabric, tried: list[int]):
    torch.manual_seed(0)
    model = Capped(fabric.global_rank, tried)
    return fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))


def fabric_train(fabric: Fabric, model, optimizer, batch_size: int) -> list[torch.Tensor]:
    loader = fabric.setup_dataloaders(DataLoader(dataset(64), batch_size=batch_size))
    for step, (x, y) in enumerate(loader):
        if step == STEPS:
            break
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        fabric.backward(loss, model=model)
        optimizer.step()
    return [p.full_tensor() if isinstance(p, DTensor) else p.detach().clone() for p in model.parameters()]


def search_and_reference(fabric: Fabric, set_up_inside: bool = False) -> dict:
    """`find_executable_batch_size` from 8, then the same training at the size found from the start.
    `set_up_inside`: each attempt sets up a model of its own (Accelerate's pattern) instead of reusing one."""
    out: dict = {}
    tried: list[int] = []
    model, optimizer = fabric_setup(fabric, tried)

    @find_executable_batch_size(fabric, starting_batch_size=8)
    def train(batch_size):
        out["found"] = batch_size
        if set_up_inside:
            return fabric_train(fabric, *fabric_setup(fabric, tried), batch_size)
        return fabric_train(fabric, model, optimizer, batch_size)

    out["weights"], out["tried"] = train(), sorted(set(tried), reverse=True)
    model, optimizer = fabric_setup(fabric, [])
    out["reference"] = fabric_train(fabric, model, optimizer, out["found"])
    return out


def fabric_cases(fabric: Fabric) -> dict:
    out = search_and_reference(fabric)
    model, optimizer = fabric_setup(fabric, [])

    @find_executable_batch_size(fabric, starting_batch_size=16, floor=4)
    def above_the_floor(batch_size):
        return fabric_train(fabric, model, optimizer, batch_size)

    try:
        above_the_floor()
    except RuntimeError as error:
        out["floor_error"] = str(error)

    no_backward: list[int] = []

    @find_executable_batch_size(fabric, starting_batch_size=5)
    def count_only(batch_size):
        out_of_memory_on_rank_1(fabric.global_rank, batch_size, no_backward)
        return batch_size

    out["no_backward"] = (count_only(), no_backward)
    return out


class CappedOnRank1(Regression):
    """Builds its loader from `batch_size`; rank 1 runs out of memory on batches above LIMIT rows."""

    def __init__(self, batch_size: int) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.tried: list[int] = []

    def forward(self, x):
        out_of_memory_on_rank_1(self.global_rank, x.shape[0], self.tried)
        return super().forward(x)

    def train_dataloader(self):
        return DataLoader(dataset(64), batch_size=self.batch_size)


def fit(batch_size: int, **options) -> tuple[CappedOnRank1, L.Trainer]:
    torch.manual_seed(0)
    model = CappedOnRank1(batch_size)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        **options)
    trainer.fit(model)
    return model, trainer


def trainer_cases() -> dict:
    out: dict = {}
    finder = BatchSizeFinder(mode="power", init_val=8, steps_per_trial=1, keep_global_batch=True)
    model, trainer = fit(8, callbacks=[finder])
    out["finder"] = dict(size=finder.optimal_batch_size, accumulate=trainer.accumulate_grad_batches,
                         tried=model.tried[:-trainer.num_training_batches * 2], steps=trainer.global_step,
                         weight=model.layer.weight.detach().clone(), bias=model.layer.bias.detach().clone())
    model, trainer = fit(2, accumulate_grad_batches=4)
    out["from_start"] = dict(steps=trainer.global_step, weight=model.layer.weight.detach().clone(),
                             bias=model.layer.bias.detach().clone())
    model, trainer = fit(8, on_oom="reduce")
    out["reduce"] = dict(splits=trainer.oom_splits, steps=trainer.global_step, tried=model.tried[:3],
                         weight=model.layer.weight.detach().clone(), bias=model.layer.bias.detach().clone())

    torch.manual_seed(0)
    model = CappedOnRank1(3)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    out["binsearch"] = dict(size=Tuner(trainer).scale_batch_size(model, mode="binsearch", init_val=3, margin=0.0,
                                                                 steps_per_trial=1),
                            tried=list(model.tried))
    try:
        fit(8, callbacks=[BatchSizeFinder(init_val=8, floor=4, steps_per_trial=1)])
    except RuntimeError as error:
        out["finder_floor_error"] = str(error)
    return out


def main(out_dir: str) -> None:
    fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp")
    fabric.launch()
    result = {"rank": fabric.global_rank, "fabric": fabric_cases(fabric), "trainer": trainer_cases()}
    # Each Linear its own shard group: rank 1 fails before the groups' all-gathers that rank 0 reaches.
    fsdp = Fabric(accelerator="cpu", devices=2, strategy=FSDPStrategy(auto_wrap_policy={nn.Linear}))
    fsdp.launch()
    result["fsdp"], result["fsdp_set_up_inside"] = search_and_reference(fsdp), search_and_reference(fsdp, True)
    if importlib.util.find_spec("deepspeed") is not None:
        deepspeed = Fabric(accelerator="cpu", devices=2, strategy="deepspeed_stage_2")
        deepspeed.launch()
        result["deepspeed_stage_2"] = search_and_reference(deepspeed)
    torch.save(result, Path(out_dir) / f"rank{fabric.global_rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1])
