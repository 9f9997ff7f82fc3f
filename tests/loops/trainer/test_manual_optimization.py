"""Manual optimization: a GAN-style step with two optimizers, toggle/untoggle, manual_backward hooks, global_step
counting every optimizer step, and the error for automatic-only flags."""
import pytest
import torch
from torch import nn

import loops as L
from tests.helpers.loops import loader, make_trainer


class GAN(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.generator = nn.Linear(4, 4)
        self.discriminator = nn.Linear(4, 1)
        self.backwards = 0
        self.frozen_seen = []

    def on_after_backward(self):
        self.backwards += 1

    def training_step(self, batch, batch_idx):
        real, _ = batch
        opt_g, opt_d = self.optimizers()
        fake = self.generator(torch.randn_like(real))

        self.toggle_optimizer(opt_d)
        self.frozen_seen.append(all(not p.requires_grad for p in self.generator.parameters()))
        d_loss = nn.functional.softplus(self.discriminator(fake.detach())).mean() + \
            nn.functional.softplus(-self.discriminator(real)).mean()
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        self.clip_gradients(opt_d, gradient_clip_val=0.5, gradient_clip_algorithm="value")
        opt_d.step()
        self.untoggle_optimizer(opt_d)

        self.toggle_optimizer(opt_g)
        g_loss = nn.functional.softplus(-self.discriminator(fake)).mean()
        opt_g.zero_grad()
        self.manual_backward(g_loss)
        opt_g.step()
        self.untoggle_optimizer(opt_g)
        self.log_dict({"d_loss": d_loss, "g_loss": g_loss}, prog_bar=True)

    def configure_optimizers(self):
        return [torch.optim.Adam(self.generator.parameters(), lr=1e-3),
                torch.optim.Adam(self.discriminator.parameters(), lr=1e-3)]


def test_gan_two_optimizers():
    model = GAN()
    g0 = model.generator.weight.detach().clone()
    d0 = model.discriminator.weight.detach().clone()
    trainer = make_trainer(max_epochs=1, limit_train_batches=3)
    trainer.fit(model, loader())
    assert trainer.global_step == 6  # every optimizer.step() counts, as in Lightning
    assert model.backwards == 6 and all(model.frozen_seen)
    assert not torch.equal(model.generator.weight, g0) and not torch.equal(model.discriminator.weight, d0)
    assert all(p.requires_grad for p in model.parameters())
    assert {"d_loss", "g_loss"} <= set(trainer.progress_bar_metrics)


def test_gradient_clip_val_with_manual_optimization_is_an_error():
    with pytest.raises(ValueError, match=r"gradient_clip_val=1.0.*manual optimization.*self.clip_gradients"):
        make_trainer(max_epochs=1, gradient_clip_val=1.0).fit(GAN(), loader())


def test_manual_backward_in_automatic_mode_is_an_error():
    class Auto(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            self.manual_backward(self.layer(batch[0]).sum())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    with pytest.raises(RuntimeError, match="manual optimization"):
        make_trainer(max_epochs=1).fit(Auto(), loader())


def test_schedulers_are_left_to_the_step_with_manual_optimization():
    class Scheduled(GAN):
        def configure_optimizers(self):
            opts = super().configure_optimizers()
            return opts, [torch.optim.lr_scheduler.StepLR(opts[0], step_size=1, gamma=0.5)]

    trainer = make_trainer(max_epochs=2, limit_train_batches=2)
    trainer.fit(Scheduled(), loader())
    assert trainer.optimizers[0].param_groups[0]["lr"] == 1e-3  # Lightning steps none of them either
