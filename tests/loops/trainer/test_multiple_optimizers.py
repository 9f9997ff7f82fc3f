"""Automatic optimization with several optimizers (beyond Lightning 2.x): training_step(batch, batch_idx,
optimizer_idx) runs once per optimizer; a GAN-like pair trained this way equals the same hand-written loop bit for
bit, with accumulation, clipping and a scheduler per optimizer."""
import pytest
import torch
from torch import nn

import loops as L
from tests.helpers.loops import loader, make_trainer


def build():
    torch.manual_seed(0)
    return nn.Linear(4, 4), nn.Linear(4, 1)


def optimizers(generator, discriminator):
    opt_g = torch.optim.Adam(generator.parameters(), lr=1e-2)
    opt_d = torch.optim.SGD(discriminator.parameters(), lr=1e-1, momentum=0.9)
    return [opt_g, opt_d], [torch.optim.lr_scheduler.StepLR(opt_g, step_size=1, gamma=0.9),
                            torch.optim.lr_scheduler.StepLR(opt_d, step_size=1, gamma=0.5)]


def loss(generator, discriminator, real, optimizer_idx):
    fake = generator(real.flip(0))  # no RNG: both loops see the same "noise"
    if optimizer_idx == 0:
        return nn.functional.softplus(-discriminator(fake)).mean()
    return nn.functional.softplus(discriminator(fake.detach())).mean() + \
        nn.functional.softplus(-discriminator(real)).mean()


class AutoGAN(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.generator, self.discriminator = build()
        self.frozen = []
        self.outputs = []

    def training_step(self, batch, batch_idx, optimizer_idx):
        other = self.discriminator if optimizer_idx == 0 else self.generator
        self.frozen.append(all(not p.requires_grad for p in other.parameters()))
        value = loss(self.generator, self.discriminator, batch[0], optimizer_idx)
        self.log(f"loss_{optimizer_idx}", value)
        return value

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.outputs.append(outputs)

    def configure_optimizers(self):
        opts, scheds = optimizers(self.generator, self.discriminator)
        return [{"optimizer": o, "lr_scheduler": {"scheduler": s, "interval": "step"}}
                for o, s in zip(opts, scheds, strict=True)]


def manual_loop(batches, accumulate, clip):
    generator, discriminator = build()
    opts, scheds = optimizers(generator, discriminator)
    owners = [generator, discriminator]
    for batch_idx, (real, _) in enumerate(batches):
        steps = (batch_idx + 1) % accumulate == 0 or batch_idx + 1 == len(batches)
        for index, (opt, owner) in enumerate(zip(opts, owners, strict=False)):
            for p in owners[1 - index].parameters():
                p.requires_grad = False
            if batch_idx % accumulate == 0:
                opt.zero_grad()
            (loss(generator, discriminator, real, index) / accumulate).backward()
            if steps:
                torch.nn.utils.clip_grad_norm_(list(owner.parameters()), clip)
                opt.step()
            for p in owners[1 - index].parameters():
                p.requires_grad = True
        if steps:
            for sched in scheds:
                sched.step()
    return generator, discriminator


@pytest.mark.parametrize("accumulate", [1, 2])
def test_gan_pair_trained_automatically_equals_the_hand_written_loop(accumulate):
    model = AutoGAN()
    trainer = make_trainer(max_epochs=1, limit_val_batches=0, accumulate_grad_batches=accumulate,
                           gradient_clip_val=0.05)
    trainer.fit(model, loader(n=24, batch_size=4))
    generator, discriminator = manual_loop(list(loader(n=24, batch_size=4)), accumulate, 0.05)
    assert torch.equal(model.generator.weight, generator.weight)
    assert torch.equal(model.discriminator.weight, discriminator.weight)
    assert trainer.global_step == 2 * 6 // accumulate  # every optimizer step counts
    assert all(model.frozen) and all(p.requires_grad for p in model.parameters())
    assert len(model.outputs) == 6 and all(len(out) == 2 and "loss" in out[0] for out in model.outputs)
    assert [g["lr"] for opt in trainer.optimizers for g in opt.param_groups] == \
        pytest.approx([1e-2 * 0.9 ** (6 // accumulate), 1e-1 * 0.5 ** (6 // accumulate)])
    assert {"loss_0", "loss_1"} <= set(trainer.callback_metrics)


def test_several_optimizers_without_optimizer_idx_is_a_clear_error():
    class NoIndex(AutoGAN):
        def training_step(self, batch, batch_idx):
            return loss(self.generator, self.discriminator, batch[0], 0)

    with pytest.raises(ValueError, match=r"2 optimizers.*training_step\(self, batch, batch_idx, optimizer_idx\)"):
        make_trainer(max_epochs=1).fit(NoIndex(), loader())


def test_checkpoint_resume_with_two_optimizers(tmp_path):
    reference = AutoGAN()
    make_trainer(max_epochs=2, limit_val_batches=0).fit(reference, loader(n=16, batch_size=4))
    first = AutoGAN()
    trainer = make_trainer(max_epochs=1, limit_val_batches=0)
    trainer.fit(first, loader(n=16, batch_size=4))
    trainer.save_checkpoint(tmp_path / "gan.ckpt")
    resumed = AutoGAN()
    trainer = make_trainer(max_epochs=2, limit_val_batches=0)
    trainer.fit(resumed, loader(n=16, batch_size=4), ckpt_path=tmp_path / "gan.ckpt")
    assert trainer.global_step == 16
    assert torch.equal(resumed.generator.weight, reference.generator.weight)
    assert torch.equal(resumed.discriminator.weight, reference.discriminator.weight)


def test_two_processes_average_each_optimizers_gradients(clean_env):
    # The toggle leaves one model's parameters without gradients in each backward: DDP needs to look for them.
    model = AutoGAN()
    trainer = make_trainer(devices=2, strategy="ddp_spawn_find_unused_parameters_true", max_epochs=1,
                           limit_val_batches=0)
    trainer.fit(model, loader(n=24, batch_size=4))
    single = AutoGAN()
    make_trainer(max_epochs=1, limit_val_batches=0).fit(single, loader(n=24, batch_size=8))
    assert trainer.global_step == 6  # 3 batches per process, 2 optimizer steps each
    assert torch.allclose(model.generator.weight, single.generator.weight, atol=1e-5)
    assert torch.allclose(model.discriminator.weight, single.discriminator.weight, atol=1e-5)
