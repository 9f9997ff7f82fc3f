"""Trainer flags and loop rules as Lightning 2.6 has them, each run on Lightning and on loops (`both`): max_time's
Timer, a sanity check that leaves the random generators alone, evaluation loaders' `set_epoch`, gradients freed
before evaluation, no evaluation hooks without batches, the graceful KeyboardInterrupt, an epoch ended by
`on_train_batch_start` returning -1 stepping its epoch scheduler, conflicting clipping values refused, the
validation loader loaded when validation runs, a time-based `val_check_interval`, and fast_dev_run with callbacks
that need a logger."""
import importlib
from datetime import timedelta

import pytest
import torch
from torch.utils.data import DataLoader, SequentialSampler

import loops
import loops.callbacks
from loops.callbacks import Timer
from tests.helpers.both_trainers import QUIET, both, pl, quiet  # noqa: F401  (quiet: a fixture used below)

pytestmark = pytest.mark.usefixtures("quiet")


def module_class(L):
    class Model(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)
            self.grads_at_evaluation = []

        def training_step(self, batch, batch_idx):
            return torch.nn.functional.dropout(self.layer(batch), 0.5).pow(2).mean()

        def validation_step(self, batch, batch_idx):
            torch.rand(3)  # the sanity check draws from the global generator too

        def on_validation_start(self):
            self.grads_at_evaluation.append([p.grad for p in self.parameters()])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return Model


def data(n=8, **kwargs):
    return DataLoader(torch.randn(n, 2, generator=torch.Generator().manual_seed(n)), batch_size=2, **kwargs)


@both
def test_max_time_adds_a_timer(L):
    timer_class = Timer if L is loops else pl.callbacks.Timer
    assert any(isinstance(c, timer_class) for c in L.Trainer(max_time={"hours": 1}, **QUIET).callbacks)
    assert not any(isinstance(c, timer_class) for c in L.Trainer(**QUIET).callbacks)


@both
def test_the_sanity_check_leaves_the_random_generators_alone(L):
    def trained(sanity_steps):
        torch.manual_seed(0)
        model = module_class(L)()
        L.Trainer(max_epochs=1, num_sanity_val_steps=sanity_steps, **QUIET).fit(model, data(), data(4))
        return model.layer.weight.detach().clone()

    assert torch.equal(trained(0), trained(2))


@both
def test_an_epoch_ended_by_on_train_batch_start_steps_its_epoch_scheduler(L):
    class Skips(module_class(L)):
        def on_train_batch_start(self, batch, batch_idx):
            return -1 if batch_idx == 2 else None

        def configure_optimizers(self):
            optimizer = torch.optim.SGD(self.parameters(), lr=1.0)
            return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.5)}

    trainer = L.Trainer(max_epochs=3, limit_val_batches=0, **QUIET)
    trainer.fit(Skips(), data())
    assert trainer.global_step == 6 and trainer.optimizers[0].param_groups[0]["lr"] == 0.125


@both
def test_clipping_in_configure_gradient_clipping_with_another_value_than_the_trainers_is_refused(L):
    class ClipsByValue(module_class(L)):
        def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
            self.clip_gradients(optimizer, gradient_clip_val=0.01, gradient_clip_algorithm="value")

    with pytest.raises(Exception, match=r"gradient_clip_val=1.0.*clip_gradients\(gradient_clip_val=0.01\)"):
        L.Trainer(max_epochs=1, gradient_clip_val=1.0, limit_val_batches=0, **QUIET).fit(ClipsByValue(), data())
    trainer = L.Trainer(max_epochs=1, limit_val_batches=0, **QUIET)  # set in one place only: it clips
    trainer.fit(ClipsByValue(), data())
    assert trainer.global_step == 4


@both
@pytest.mark.parametrize(("reload", "every", "sanity", "expected"), [
    (1, 2, 0, "train0 train1 val1 train2 train3 val3 train4 train5 val5"),
    (2, 1, 2, "val0 train0 train2 val2 train4 val4"),
    (2, 3, 2, "val0 train0 train2 val2 train4 val5"),
    (3, 2, 0, "train0 val1 train3 val5"),
])
def test_the_validation_loader_is_loaded_when_validation_runs(L, reload, every, sanity, expected):
    """...and again once `reload_dataloaders_every_n_epochs` epochs passed since it was loaded."""
    class Loads(module_class(L)):
        calls = []

        def train_dataloader(self):
            self.calls.append(f"train{self.current_epoch}")
            return data()

        def val_dataloader(self):
            self.calls.append(f"val{self.current_epoch}")
            return data(4)

    model = Loads()
    L.Trainer(max_epochs=6, reload_dataloaders_every_n_epochs=reload, check_val_every_n_epoch=every,
              num_sanity_val_steps=sanity, **QUIET).fit(model)
    assert " ".join(model.calls) == expected


class EpochSampler(SequentialSampler):
    def __init__(self, data_source):
        super().__init__(data_source)
        self.epochs = []

    def set_epoch(self, epoch):
        self.epochs.append(epoch)


@both
def test_evaluation_loaders_get_the_training_epoch(L):
    val = DataLoader(torch.randn(4, 2), batch_size=2, sampler=EpochSampler(range(4)))
    L.Trainer(max_epochs=3, **QUIET).fit(module_class(L)(), data(), val)
    assert val.sampler.epochs == [0, 0, 1, 2]  # the sanity check, then each epoch's validation


@both
def test_gradients_are_freed_before_evaluation(L):
    model = module_class(L)()
    trainer = L.Trainer(max_epochs=1, num_sanity_val_steps=0, **QUIET)
    trainer.fit(model, data(), data(4))  # validation after the epoch's last step frees them
    trainer.fit_loop.max_epochs = 2
    trainer.limit_val_batches = 0
    trainer.fit(model, data())
    assert all(p.grad is not None for p in model.parameters())  # the last step's, left after fit
    trainer.limit_val_batches = 1.0
    trainer.validate(model, data(4), verbose=False)
    assert model.grads_at_evaluation == [[None, None], [None, None]]


@both
def test_no_evaluation_hook_runs_without_batches(L):
    model = module_class(L)()
    assert L.Trainer(limit_val_batches=0, **QUIET).validate(model, data(4), verbose=False) == []
    assert model.grads_at_evaluation == []


@both
def test_a_keyboard_interrupt_shuts_down_gracefully(L):
    class Interrupted(module_class(L)):
        def training_step(self, batch, batch_idx):
            if batch_idx == 1:
                raise KeyboardInterrupt
            return super().training_step(batch, batch_idx)

    class Seen(L.Callback):
        def on_exception(self, trainer, pl_module, exception):
            self.exception = exception

    seen = Seen()
    trainer = L.Trainer(max_epochs=1, callbacks=[seen], **QUIET)
    with pytest.raises(SystemExit) as exit_info:
        trainer.fit(Interrupted(), data())
    assert exit_info.value.code == 1 and isinstance(seen.exception, KeyboardInterrupt)
    assert trainer.interrupted and trainer.state.status == "interrupted"


@both
def test_a_monitored_metric_never_logged_warns_instead_of_failing(L, tmp_path):
    checkpoint_class = loops.callbacks.ModelCheckpoint if L is loops else pl.callbacks.ModelCheckpoint
    checkpoint = checkpoint_class(tmp_path, monitor="val_loss")
    trainer = L.Trainer(max_epochs=2, callbacks=[checkpoint], **{**QUIET, "enable_checkpointing": True})
    with pytest.warns(UserWarning, match="val_loss"):
        trainer.fit(module_class(L)(), data())  # no validation data: val_loss never comes
    assert (trainer.current_epoch, checkpoint.best_model_path, list(tmp_path.iterdir())) == (2, "", [])


@both
def test_optimizer_step_returns_the_closures_loss(L):
    class Stepping(module_class(L)):
        def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
            self.returned = optimizer.step(closure=optimizer_closure)

    model = Stepping()
    L.Trainer(max_steps=1, **QUIET).fit(model, data())
    assert isinstance(model.returned, torch.Tensor) and model.returned.ndim == 0


@both
def test_learning_rates_reach_callback_metrics(L, tmp_path):
    monitor = (loops.callbacks if L is loops else pl.callbacks).LearningRateMonitor()
    trainer = L.Trainer(max_epochs=1, callbacks=[monitor], **{**QUIET, "logger": True, "default_root_dir": tmp_path})
    trainer.fit(module_class(L)(), data())
    assert float(trainer.callback_metrics["lr-SGD"]) == pytest.approx(0.1)


@both
def test_learning_rate_keys_follow_parameter_groups_added_during_training(L, tmp_path):
    class Grows(module_class(L)):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            return super().training_step(batch, batch_idx) + self.head(batch).pow(2).mean()

        def on_train_epoch_start(self):
            if self.current_epoch == 1:
                self.trainer.optimizers[0].add_param_group({"params": self.head.parameters(), "lr": 0.5})

        def configure_optimizers(self):
            return torch.optim.SGD(self.layer.parameters(), lr=0.1)

    class Keys(L.Callback):
        seen = []

        def on_train_epoch_end(self, trainer, pl_module):
            self.seen.append(sorted(k for k in trainer.callback_metrics if k.startswith("lr-")))

    monitor = (loops.callbacks if L is loops else pl.callbacks).LearningRateMonitor()
    trainer = L.Trainer(max_epochs=2, callbacks=[monitor, Keys()], log_every_n_steps=1,
                        **{**QUIET, "logger": True, "default_root_dir": tmp_path})
    trainer.fit(Grows(), data())
    assert Keys.seen == [["lr-SGD"], ["lr-SGD", "lr-SGD/pg1", "lr-SGD/pg2"]]
    assert float(trainer.callback_metrics["lr-SGD/pg2"]) == pytest.approx(0.5)


@both
@pytest.mark.parametrize(("interval", "validations"), [
    (timedelta(0), 8),  # due after every batch of the 2 epochs
    ({"days": 1}, 0),  # never due: no validation at the epochs' ends either
    ("00:00:00:00", 8)], ids=["timedelta", "dict", "DD:HH:MM:SS"])
def test_time_based_val_check_interval(L, interval, validations):
    model = module_class(L)()
    trainer = L.Trainer(**QUIET, max_epochs=2, num_sanity_val_steps=0, val_check_interval=interval)
    trainer.fit(model, data(), data(4))
    assert len(model.grads_at_evaluation) == validations


@both
def test_time_based_val_check_interval_format(L):
    with pytest.raises(Exception, match="val_check_interval"):
        L.Trainer(**QUIET, val_check_interval="00:01:00")  # not DD:HH:MM:SS


@both
def test_fast_dev_run_with_monitors_that_need_a_logger(L):
    callbacks = importlib.import_module(f"{L.__name__}.callbacks")
    trainer = L.Trainer(**{**QUIET, "logger": None}, fast_dev_run=True,
                        callbacks=[callbacks.LearningRateMonitor(), callbacks.DeviceStatsMonitor()])
    trainer.fit(module_class(L)(), data(), data(4))
    assert trainer.global_step == 1
