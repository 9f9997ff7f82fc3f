"""Train a small CNN on scikit-learn's 8x8 digits with Fabric, on as many processes as you launch.

    fabric run --devices 2 examples/fabric/image_classifier.py      # 2 CPU processes (DDP); `make train`
    python examples/fabric/image_classifier.py                     # 1 process
    python examples/fabric/image_classifier.py --epochs 1          # quicker

The data ships with scikit-learn, so nothing is downloaded. Loss and accuracy go to TensorBoard (tensorboardX), a
checkpoint is written after every epoch, and a run started again resumes from the latest one (delete `--out` to
start over). Evaluation gives each test sample to exactly one process (`even_shards=False`), so the accuracy summed
over processes counts every sample once.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fabric_kit import Fabric
from fabric_kit.checkpoint import latest_checkpoint
from fabric_kit.loggers import TensorBoardLogger


def digits(train: bool) -> TensorDataset:
    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(data.target)
    split = int(0.8 * len(labels))
    part = slice(0, split) if train else slice(split, None)
    return TensorDataset(images[part], labels[part])


def make_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 2 * 2, 10),
    )


def evaluate(fabric: Fabric, model: nn.Module, loader: DataLoader) -> tuple[float, int]:
    """Accuracy over the whole test set, counted across processes, and the number of test images."""
    model.eval()
    correct, seen = torch.tensor(0, device=fabric.device), torch.tensor(0, device=fabric.device)
    with torch.no_grad():
        for images, labels in loader:
            correct += (model(images).argmax(dim=1) == labels).sum()
            seen += len(labels)
    model.train()
    correct, seen = fabric.all_reduce(correct, reduce_op="sum"), fabric.all_reduce(seen, reduce_op="sum")
    return correct.item() / seen.item(), int(seen.item())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--out", default="runs/image_classifier", help="logs and checkpoints (default %(default)s)")
    args = parser.parse_args()

    logger = TensorBoardLogger(root_dir=args.out)
    # devices, strategy and precision come from `fabric run` (or torchrun), else 1 CPU process
    fabric = Fabric(loggers=logger)
    fabric.launch()
    fabric.seed_everything(42)

    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    model, optimizer = fabric.setup(model, optimizer)
    train_loader = fabric.setup_dataloaders(DataLoader(digits(train=True), batch_size=args.batch_size, shuffle=True))
    test_loader = fabric.setup_dataloaders(DataLoader(digits(train=False), batch_size=256), even_shards=False)

    checkpoints = Path(args.out) / "checkpoints"
    state = {"model": model, "optimizer": optimizer, "loader": train_loader, "epoch": 0, "step": 0}
    latest = latest_checkpoint(checkpoints)
    if latest is not None:
        fabric.load(latest, state)
        fabric.print(f"resumed from {latest} after epoch {state['epoch']}")

    while state["epoch"] < args.epochs:
        for images, labels in train_loader:
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(images), labels)
            fabric.backward(loss)
            optimizer.step()
            state["step"] += 1
            if state["step"] % 10 == 0:
                fabric.log("train/loss", loss.item(), step=state["step"])
        state["epoch"] += 1
        accuracy, _ = evaluate(fabric, model, test_loader)
        fabric.log_dict({"test/accuracy": accuracy, "epoch": state["epoch"]}, step=state["step"])
        fabric.save(checkpoints / f"epoch-{state['epoch']:03d}.ckpt", state)
        fabric.print(f"epoch {state['epoch']}: last loss {loss.item():.4f}, test accuracy {accuracy:.4f}")

    accuracy, seen = evaluate(fabric, model, test_loader)
    logger.finalize("success")
    fabric.print(f"final accuracy: {accuracy:.4f} on {seen} test images "
                 f"({fabric.world_size} process(es))")
    fabric.print(f"checkpoints: {checkpoints.resolve()}")
    fabric.print(f"logs: {Path(logger.log_dir).resolve()}")
    fabric.print(f"open them with: tensorboard --logdir {Path(args.out).resolve()}   (pip install tensorboard)")


if __name__ == "__main__":
    main()
