"""Train a small regression model on an XLA device (TPU, or XLA's CPU backend for trying it anywhere).

    PJRT_DEVICE=CPU python examples/fabric/xla_regression.py          # XLA's CPU backend, one device
    PJRT_DEVICE=TPU python examples/fabric/xla_regression.py --devices 8 --strategy xla   # every core of a TPU host

Needs the `xla` extra in its own environment (torch_xla 2.9.0 pins torch==2.9.0): `make test-xla` builds one.
The loop is the same as on any other device; `fabric.launch(train)` is required because the `xla` strategy starts
fresh processes.
"""
from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fabric_kit import Fabric


def train(fabric: Fabric, epochs: int) -> float:
    fabric.seed_everything(0)
    inputs = torch.randn(256, 8)
    targets = inputs @ torch.randn(8, 1) + 0.1 * torch.randn(256, 1)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    model, optimizer = fabric.setup(model, optimizer)
    loader = fabric.setup_dataloaders(DataLoader(TensorDataset(inputs, targets), batch_size=32, shuffle=True))
    for epoch in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            fabric.backward(loss)
            optimizer.step()
        fabric.print(f"epoch {epoch}: loss {loss.item():.4f}")
    return loss.item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", default="1", help="1, or the host's device count with --strategy xla")
    parser.add_argument("--strategy", default="auto", help="auto (single_xla for one device), xla, xla_fsdp")
    parser.add_argument("--precision", default="32-true", help="32-true, bf16-true or bf16-mixed")
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    devices = int(args.devices) if args.devices.isdigit() else args.devices
    fabric = Fabric(accelerator="xla", devices=devices, strategy=args.strategy, precision=args.precision)
    fabric.launch(train, args.epochs)


if __name__ == "__main__":
    main()
