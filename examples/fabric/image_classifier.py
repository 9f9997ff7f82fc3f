"""Train a small CNN on scikit-learn's 8x8 digits with Fabric, on as many processes as you launch.

    fabric run --devices 2 examples/fabric/image_classifier.py      # 2 CPU processes (DDP)
    python examples/fabric/image_classifier.py                     # 1 process
    python examples/fabric/image_classifier.py --epochs 1          # quicker

The data ships with scikit-learn, so nothing is downloaded. Evaluation gives each test sample to exactly one
process (`even_shards=False`), so the accuracy summed over processes counts every sample once.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fabric_kit import Fabric


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--out", default="runs/image_classifier", help="where the checkpoint is written")
    args = parser.parse_args()

    fabric = Fabric()  # devices, strategy and precision come from `fabric run` (or torchrun), else 1 CPU process
    fabric.launch()
    fabric.seed_everything(42)

    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    model, optimizer = fabric.setup(model, optimizer)
    train_loader = fabric.setup_dataloaders(DataLoader(digits(train=True), batch_size=args.batch_size, shuffle=True))
    test_loader = fabric.setup_dataloaders(DataLoader(digits(train=False), batch_size=256), even_shards=False)

    for epoch in range(args.epochs):
        model.train()
        for images, labels in train_loader:
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(images), labels)
            fabric.backward(loss)
            optimizer.step()
        fabric.print(f"epoch {epoch}: last loss {loss.item():.4f}")

    model.eval()
    correct, seen = torch.tensor(0), torch.tensor(0)
    with torch.no_grad():
        for images, labels in test_loader:
            correct += (model(images).argmax(dim=1) == labels).sum()
            seen += len(labels)
    correct, seen = fabric.all_reduce(correct, reduce_op="sum"), fabric.all_reduce(seen, reduce_op="sum")
    checkpoint = Path(args.out) / "final.ckpt"
    fabric.save(checkpoint, {"model": model, "optimizer": optimizer, "epochs": args.epochs})
    fabric.print(f"final accuracy: {correct.item() / seen.item():.4f} on {seen.item()} test images "
                 f"({fabric.world_size} process(es))")
    fabric.print(f"checkpoint: {checkpoint.resolve()}")


if __name__ == "__main__":
    main()
