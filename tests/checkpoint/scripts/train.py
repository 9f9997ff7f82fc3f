"""A small training run that checkpoints every SAVE_EVERY steps and resumes from the latest intact checkpoint at
start-up. It can SIGKILL itself at step KILL_AT (only in the run that starts from scratch, or, with MARKER, only
once per marker file). Configured through environment variables; rank 0 writes the final weights to OUT."""
import os
import signal
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from fabric_kit import Fabric, seed_everything
from fabric_kit.checkpoint import latest_checkpoint


class Indexed(Dataset):
    def __init__(self, n: int) -> None:
        generator = torch.Generator().manual_seed(1234)
        self.x = torch.randn(n, 8, generator=generator)
        self.y = torch.randn(n, 1, generator=generator)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int):
        return self.x[index], self.y[index], index


def should_kill(rank: int, resumed_from: int) -> bool:
    if os.environ.get("KILL_RANK", "all") not in ("all", str(rank)):
        return False
    marker = os.environ.get("MARKER")
    if marker is None:
        return resumed_from == 0
    if os.path.exists(marker):
        return False
    Path(marker).touch()
    return True


def main() -> None:
    env = os.environ
    fabric = Fabric(accelerator="cpu", strategy=env.get("STRATEGY", "auto"), devices=int(env.get("DEVICES", "1")))
    fabric.launch()
    seed_everything(42)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(32, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model, optimizer = fabric.setup(model, optimizer)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.7)
    loader = fabric.setup_dataloaders(DataLoader(Indexed(int(env["N"])), batch_size=int(env["BATCH"]), shuffle=True,
                                                 num_workers=int(env.get("NUM_WORKERS", "0"))))
    state = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "loader": loader, "step": 0}
    directory = Path(env["CKPT_DIR"])
    latest = latest_checkpoint(directory)
    if latest is not None:
        fabric.load(latest, state)
    resumed_from = state["step"]
    total, save_every, kill_at = int(env["TOTAL"]), int(env["SAVE_EVERY"]), int(env.get("KILL_AT", "-1"))
    log = open(f"{env['SEEN_LOG']}.{fabric.world_size}.{fabric.global_rank}", "a") if "SEEN_LOG" in env else None
    while state["step"] < total:
        epoch = loader.state_dict()["epoch"]
        for x, y, index in loader:
            loss = torch.nn.functional.mse_loss(model(x), y)
            optimizer.zero_grad()
            fabric.backward(loss)
            optimizer.step()
            scheduler.step()
            state["step"] += 1
            if log is not None:
                log.write(f"{epoch} {state['step']} {' '.join(map(str, index.tolist()))}\n")
                log.flush()
            if state["step"] % save_every == 0:
                fabric.save(directory / f"step-{state['step']:05d}.ckpt", state)
            if state["step"] == kill_at and should_kill(fabric.global_rank, resumed_from):
                os.kill(os.getpid(), signal.SIGKILL)
            if state["step"] == total:
                break
    if fabric.is_global_zero:
        torch.save({"model": model.state_dict(), "resumed_from": resumed_from}, env["OUT"])


if __name__ == "__main__":
    main()
