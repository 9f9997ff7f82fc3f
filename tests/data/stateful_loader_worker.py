"""The script behind test_stateful_loader.py: a torchdata StatefulDataLoader (2 workers, shuffled) through
`setup_dataloaders`, on DEVICES CPU processes.

    python stateful_loader_worker.py first DEVICES OUT_DIR    # an uninterrupted run, then a run killed mid-epoch
    python stateful_loader_worker.py resume DEVICES OUT_DIR   # the killed run resumed from its checkpoint

Each rank saves the batches it saw to OUT_DIR/<phase>_rank<r>.pt: "uninterrupted" (EPOCHS epochs), "before_kill"
(the first KILL_AT batches, then saved with `fabric.save` and SIGKILLed), "resumed" (what followed the load).
"""
import os
import signal
import sys

import torch
from torch.utils.data import Dataset
from torchdata.stateful_dataloader import StatefulDataLoader

from fabric_kit import Fabric

SIZE, BATCH, EPOCHS, KILL_AT = 32, 2, 2, 3


class Indices(Dataset):
    def __len__(self):
        return SIZE

    def __getitem__(self, index):
        return torch.tensor(index)


def loader(fabric):
    return fabric.setup_dataloaders(StatefulDataLoader(Indices(), batch_size=BATCH, shuffle=True, num_workers=2))


def batches(loader, epochs, stop_at=None):
    seen = []
    for _ in range(epochs):
        for batch in loader:
            seen.append(batch.tolist())
            if len(seen) == stop_at:
                return seen
    return seen


def main(phase, devices, out):
    fabric = Fabric(accelerator="cpu", devices=int(devices))
    fabric.launch()
    fabric.seed_everything(7)
    save = lambda name, value: torch.save(value, os.path.join(out, f"{name}_rank{fabric.global_rank}.pt"))  # noqa: E731
    checkpoint = os.path.join(out, "checkpoint.ckpt")
    if phase == "first":
        save("uninterrupted", batches(loader(fabric), EPOCHS))
        train_loader = loader(fabric)
        save("before_kill", batches(train_loader, EPOCHS, stop_at=KILL_AT))
        fabric.save(checkpoint, {"loader": train_loader, "batches": KILL_AT})
        os.kill(os.getpid(), signal.SIGKILL)  # no clean-up: the loader's workers are mid-epoch
    train_loader = loader(fabric)
    state = {"loader": train_loader, "batches": 0}
    fabric.load(checkpoint, state)
    # The rest of the killed epoch, then the remaining epochs.
    save("resumed", batches(train_loader, EPOCHS))


if __name__ == "__main__":
    main(*sys.argv[1:4])
