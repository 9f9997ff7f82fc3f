"""A GAN with two models and two optimizers under Fabric: the generator learns to draw points on a ring.

    fabric run --devices 2 examples/fabric/gan_two_optimizers.py    # 2 CPU processes (DDP)
    python examples/fabric/gan_two_optimizers.py --steps 200        # 1 process, quicker

Each model is set up with its own optimizer. The discriminator's step detaches the generated points; the
generator's step backpropagates through the discriminator, whose gradients are then cleared by its next
`zero_grad`. At the end the generated points' mean radius should approach the ring's (1.0).
"""
from __future__ import annotations

import argparse
import math

import torch
from torch import nn

from fabric_kit import Fabric

NOISE = 8


def ring(n: int) -> torch.Tensor:
    """Points on the unit circle, with a little noise."""
    angle = torch.rand(n) * 2 * math.pi
    return torch.stack([angle.cos(), angle.sin()], dim=1) + 0.02 * torch.randn(n, 2)


def mlp(inputs: int, outputs: int) -> nn.Module:
    return nn.Sequential(nn.Linear(inputs, 64), nn.LeakyReLU(0.2), nn.Linear(64, 64), nn.LeakyReLU(0.2),
                         nn.Linear(64, outputs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()

    fabric = Fabric()  # devices and strategy come from `fabric run` (or torchrun), else 1 CPU process
    fabric.launch()
    fabric.seed_everything(7 + fabric.global_rank)  # each rank draws its own real and generated points

    generator, discriminator = mlp(NOISE, 2), mlp(2, 1)
    generator, g_optimizer = fabric.setup(generator,
                                          torch.optim.Adam(generator.parameters(), args.lr, betas=(0.5, 0.9)))
    discriminator, d_optimizer = fabric.setup(discriminator,
                                              torch.optim.Adam(discriminator.parameters(), args.lr, betas=(0.5, 0.9)))
    bce = nn.functional.binary_cross_entropy_with_logits
    real_label = torch.ones(args.batch_size, 1, device=fabric.device)
    fake_label = torch.zeros(args.batch_size, 1, device=fabric.device)

    for step in range(1, args.steps + 1):
        real = fabric.to_device(ring(args.batch_size))
        fake = generator(torch.randn(args.batch_size, NOISE, device=fabric.device))

        d_optimizer.zero_grad()
        d_loss = bce(discriminator(real), real_label) + bce(discriminator(fake.detach()), fake_label)
        fabric.backward(d_loss)
        d_optimizer.step()

        g_optimizer.zero_grad()
        g_loss = bce(discriminator(fake), real_label)
        fabric.backward(g_loss)
        g_optimizer.step()

        if step % max(1, args.steps // 5) == 0:
            fabric.print(f"step {step}: discriminator loss {d_loss.item():.3f}, generator loss {g_loss.item():.3f}")

    with torch.no_grad():
        radius = generator(torch.randn(1000, NOISE, device=fabric.device)).norm(dim=1).mean()
    radius = fabric.all_reduce(radius, reduce_op="mean")
    fabric.print(f"mean radius of generated points: {radius.item():.3f} (target 1.0, {fabric.world_size} process(es))")


if __name__ == "__main__":
    main()
