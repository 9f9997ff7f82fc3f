"""Run by test_manual_optimization_ddp.py as `python loops_ddp_manual_gan.py OUT_DIR STRATEGY:TOGGLE ...`: Lightning's
GAN pattern, two `manual_backward` calls (and two optimizer steps) inside one `training_step`, on 2 processes with
`Trainer(strategy=STRATEGY, devices=2)`; with TOGGLE=1 each half runs between toggle_optimizer/untoggle_optimizer.
The runs follow one another in the same 2 processes (the first Trainer re-runs this script for rank 1). Each rank
saves its final weights of every run, by "STRATEGY:TOGGLE", to OUT_DIR/rank{r}.pt."""
import sys
from pathlib import Path

import torch
from torch import nn

import loops as L
from tests.helpers.loops import loader


class GAN(L.LightningModule):
    def __init__(self, toggle: bool):
        super().__init__()
        self.automatic_optimization = False
        self.toggle = toggle
        self.generator = nn.Linear(4, 4)
        self.discriminator = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        real, _ = batch
        opt_g, opt_d = self.optimizers()
        if self.toggle:
            self.toggle_optimizer(opt_g)
        g_loss = (self.discriminator(self.generator(real)) - 1).pow(2).mean()
        self.manual_backward(g_loss)
        opt_g.step()
        opt_g.zero_grad()
        if self.toggle:
            self.untoggle_optimizer(opt_g)
            self.toggle_optimizer(opt_d)
        fake = self.generator(real).detach()
        d_loss = self.discriminator(fake).pow(2).mean() + (self.discriminator(real) - 1).pow(2).mean()
        self.manual_backward(d_loss)
        opt_d.step()
        opt_d.zero_grad()
        if self.toggle:
            self.untoggle_optimizer(opt_d)

    def configure_optimizers(self):
        return (torch.optim.SGD(self.generator.parameters(), lr=0.1),
                torch.optim.SGD(self.discriminator.parameters(), lr=0.1))


def train(devices: int, strategy: str, toggle: bool) -> GAN:
    """Two epochs of 32 samples: batches of 4 per process on 2 processes, of 8 on one."""
    torch.manual_seed(0)
    model = GAN(toggle)
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy=strategy, max_epochs=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0)
    trainer.fit(model, loader(n=32, batch_size=8 // devices))
    return model


if __name__ == "__main__":
    out, runs = sys.argv[1], sys.argv[2:]
    weights = {}
    for run in runs:
        strategy, toggle = run.split(":")
        model = train(2, strategy, toggle == "1")
        weights[run] = {name: p.detach() for name, p in model.named_parameters()}
    torch.save(weights, Path(out) / f"rank{model.global_rank}.pt")
