"""Trainer flags that shape the fit loop, checked by counting batches, validation runs and optimizer steps."""
import time

import pytest
import torch

from tests.helpers.loops import Counter, Regression, loader, make_trainer


def fit(model=None, train=None, val=None, **kwargs):
    counter = Counter()
    trainer = make_trainer(callbacks=[counter], **kwargs)
    trainer.fit(model or Regression(), loader() if train is None else train, loader(n=16) if val is None else val)
    return trainer, counter


def test_fast_dev_run_runs_one_batch_each_and_stops():
    trainer, counter = fit(fast_dev_run=True, max_epochs=5)
    assert (counter.train_batches, counter.val_batches, counter.val_runs) == (1, 1, 1)
    assert trainer.global_step == 1 and trainer.current_epoch == 1


def test_fast_dev_run_int():
    trainer, counter = fit(fast_dev_run=3)
    assert (counter.train_batches, counter.val_batches, trainer.global_step) == (3, 3, 3)


def test_limit_batches_int_and_fraction():
    trainer, counter = fit(max_epochs=2, limit_train_batches=3, limit_val_batches=0.5, num_sanity_val_steps=0)
    assert counter.train_batches == 6 and counter.val_batches == 2 * 2  # 16 samples / 4 = 4 batches, half of them
    assert trainer.num_training_batches == 3 and trainer.num_val_batches == [2]


def test_limit_val_batches_zero_disables_validation():
    _, counter = fit(max_epochs=1, limit_val_batches=0)
    assert counter.val_runs == 0


def test_overfit_batches_uses_the_same_batches_unshuffled():
    seen = []

    class Model(Regression):
        def training_step(self, batch, batch_idx):
            seen.append(batch[0][0, 0].item())
            return super().training_step(batch, batch_idx)

    trainer, counter = fit(Model(), train=loader(shuffle=True), max_epochs=2, overfit_batches=2,
                           num_sanity_val_steps=0)
    assert counter.train_batches == 4 and seen[:2] == seen[2:]
    assert seen[:2] == [loader().dataset[0][0][0].item(), loader().dataset[4][0][0].item()]


def test_max_steps_stops_mid_epoch():
    trainer, counter = fit(max_steps=5, max_epochs=10, limit_val_batches=0)
    assert trainer.global_step == 5 and counter.train_batches == 5 and trainer.current_epoch == 1  # as Lightning


def test_max_time_stops_training():
    class Slow(Regression):
        def training_step(self, batch, batch_idx):
            time.sleep(0.3)
            return super().training_step(batch, batch_idx)

    trainer, counter = fit(Slow(), max_time={"seconds": 1}, max_epochs=100, limit_val_batches=0)
    # at most 4 batches of 0.3 s fit before the time is up, however slow the machine (800 without max_time)
    assert 1 <= counter.train_batches <= 4


def test_max_time_string_format_checked():
    with pytest.raises(ValueError, match="DD:HH:MM:SS"):
        make_trainer(max_time="1 hour")


def test_val_check_interval_fraction():
    _, counter = fit(max_epochs=1, val_check_interval=0.25, num_sanity_val_steps=0)  # 8 batches
    assert counter.val_runs == 4 and counter.epochs[0] == (0, 2)


def test_val_check_interval_int():
    _, counter = fit(max_epochs=2, val_check_interval=3, num_sanity_val_steps=0)  # at batches 3 and 6
    assert counter.val_runs == 4 and [step for _, step in counter.epochs] == [3, 6, 11, 14]


def test_val_check_interval_larger_than_epoch_needs_check_val_every_n_epoch_none():
    with pytest.raises(ValueError, match="check_val_every_n_epoch=None"):
        fit(max_epochs=2, val_check_interval=12)
    _, counter = fit(max_epochs=3, val_check_interval=12, check_val_every_n_epoch=None, num_sanity_val_steps=0)
    assert [step for _, step in counter.epochs] == [12, 24]  # 8 batches per epoch, every 12 batches overall
    trainer, counter = fit(max_epochs=1, val_check_interval=12, limit_val_batches=0)  # validation off: no error
    assert trainer.global_step == 8 and counter.val_runs == 0


def test_check_val_every_n_epoch():
    _, counter = fit(max_epochs=4, check_val_every_n_epoch=2, num_sanity_val_steps=0)
    assert [epoch for epoch, _ in counter.epochs] == [1, 3]


def test_accumulate_grad_batches_counts_optimizer_steps():
    trainer, counter = fit(max_epochs=1, accumulate_grad_batches=3, limit_val_batches=0)  # 8 batches
    assert trainer.global_step == 3  # steps after batches 3, 6 and the last one (8)
    assert counter.steps == [0, 0, 1, 1, 1, 2, 2, 3]


def test_accumulated_gradients_equal_one_big_batch():
    torch.manual_seed(0)
    small = Regression(lr=0.5)
    big = Regression(lr=0.5)
    big.load_state_dict(small.state_dict())
    make_trainer(max_epochs=1, accumulate_grad_batches=4, limit_val_batches=0).fit(small, loader(n=16, batch_size=4))
    make_trainer(max_epochs=1, limit_val_batches=0).fit(big, loader(n=16, batch_size=16))
    assert torch.allclose(small.layer.weight, big.layer.weight, atol=1e-6)


def test_gradient_clip_val_clips_norm():
    norms = []

    class Model(Regression):
        def on_before_optimizer_step(self, optimizer):
            norms.append(None)

        def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
            optimizer.step(closure=optimizer_closure)
            norms[-1] = torch.cat([p.grad.flatten() for p in self.parameters()]).norm().item()

    fit(Model(), max_epochs=1, limit_train_batches=2, limit_val_batches=0, gradient_clip_val=1e-3)
    assert norms and all(n == pytest.approx(1e-3, rel=1e-3) for n in norms)


def test_min_epochs_overrides_should_stop():
    class Stop(Regression):
        def on_train_epoch_start(self):
            self.trainer.should_stop = True

    trainer, _ = fit(Stop(), max_epochs=5, min_epochs=2, limit_train_batches=1, limit_val_batches=0)
    assert trainer.current_epoch == 2


def test_on_train_batch_start_minus_one_skips_rest_of_epoch():
    class Skip(Regression):
        def on_train_batch_start(self, batch, batch_idx):
            return -1 if batch_idx == 2 else None

    _, counter = fit(Skip(), max_epochs=2, limit_val_batches=0)
    assert counter.train_batches == 4


def test_estimated_stepping_batches():
    seen = {}

    class Model(Regression):
        def configure_optimizers(self):
            seen["steps"] = self.trainer.estimated_stepping_batches
            return super().configure_optimizers()

    fit(Model(), max_epochs=3, accumulate_grad_batches=3, limit_val_batches=0)
    assert seen["steps"] == 3 * 3  # ceil(8 / 3) per epoch


def test_reload_dataloaders_every_n_epochs():
    calls = []

    class Model(Regression):
        def train_dataloader(self):
            calls.append(self.trainer.current_epoch)
            return loader()

    make_trainer(max_epochs=4, reload_dataloaders_every_n_epochs=2, limit_val_batches=0).fit(Model())
    assert calls == [0, 2]


def test_iterable_dataset_without_length_validates_at_epoch_end():
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            generator = torch.Generator().manual_seed(0)
            for _ in range(6):
                yield torch.randn(4, generator=generator), torch.randn(1, generator=generator)

    trainer, counter = fit(train=torch.utils.data.DataLoader(Stream(), batch_size=2), max_epochs=2,
                           num_sanity_val_steps=0)
    assert counter.train_batches == 6 and counter.val_runs == 2 and trainer.global_step == 6
    assert trainer.num_training_batches == float("inf")


def test_several_training_loaders_cycle_the_shorter_ones():
    seen = []

    class Model(Regression):
        def training_step(self, batch, batch_idx):
            seen.append((batch["a"][0].shape[0], batch["b"][0].shape[0]))
            return self.loss(batch["a"]) + self.loss(batch["b"])

    trainer, counter = fit(Model(), train={"a": loader(n=16, batch_size=4), "b": loader(n=8, batch_size=2)},
                           max_epochs=1, limit_val_batches=0)
    assert trainer.num_training_batches == 4 and counter.train_batches == 4 and seen == [(4, 2)] * 4

    class Pair(Regression):
        def training_step(self, batch, batch_idx):
            return self.loss(batch[0]) + self.loss(batch[1])

    trainer, counter = fit(Pair(), train=[loader(n=8), loader(n=24)], max_epochs=1, limit_val_batches=0)
    assert counter.train_batches == 6


def test_reloaded_loader_shuffles_like_an_unreloaded_one():
    def first_items(reload):
        seen = []

        class Model(Regression):
            def train_dataloader(self):
                return loader(shuffle=True)

            def on_train_batch_start(self, batch, batch_idx):
                if batch_idx == 0:
                    seen.append(batch[1][0].item())

        make_trainer(max_epochs=3, reload_dataloaders_every_n_epochs=reload, limit_val_batches=0).fit(Model())
        return seen

    assert first_items(1) == first_items(0) and len(set(first_items(0))) == 3
