"""Every form configure_optimizers may return, how schedulers step, and the errors for anything else."""
import pytest
import torch

from loops.core.optimizer_config import parse_optimizers
from tests.helpers.loops import Regression, loader, make_trainer

PARAM = [torch.nn.Parameter(torch.zeros(1))]


def sgd():
    return torch.optim.SGD(PARAM, lr=1.0)


def step_lr(opt):
    return torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)


def test_forms():
    assert parse_optimizers(None) == ([], [])
    a, b = sgd(), sgd()
    assert parse_optimizers(a) == ([a], [])
    assert parse_optimizers([a, b]) == ([a, b], [])
    assert parse_optimizers((a,)) == ([a], [])
    opts, scheds = parse_optimizers(([a], [step_lr(a)]))
    assert opts == [a] and scheds[0].interval == "epoch" and scheds[0].frequency == 1
    opts, scheds = parse_optimizers({"optimizer": a, "lr_scheduler": {"scheduler": step_lr(a), "interval": "step",
                                                                      "frequency": 2, "name": "lr"}})
    assert opts == [a] and (scheds[0].interval, scheds[0].frequency, scheds[0].name) == ("step", 2, "lr")
    opts, scheds = parse_optimizers([{"optimizer": a, "lr_scheduler": step_lr(a)}, {"optimizer": b}])
    assert opts == [a, b] and len(scheds) == 1
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(a)
    _, scheds = parse_optimizers({"optimizer": a, "lr_scheduler": plateau, "monitor": "val_loss"})
    assert scheds[0].reduce_on_plateau and scheds[0].monitor == "val_loss"


@pytest.mark.parametrize("bad", ["adam", 3, [sgd(), "x"], {"optim": sgd()}, ([sgd()], [object()])])
def test_unsupported_forms_list_what_is_accepted(bad):
    with pytest.raises(ValueError, match="configure_optimizers may return") as error:
        parse_optimizers(bad)
    assert "unsupported return value" in str(error.value)


def test_fit_names_the_unsupported_configure_optimizers_value():
    model = WithScheduler(lambda opt: {"optimizer": opt, "scheduler": step_lr(opt)})
    with pytest.raises(ValueError, match=r"(?s)unsupported return value of configure_optimizers.*'scheduler'.*"
                                         r"configure_optimizers may return:.*one optimizer"):
        make_trainer(max_epochs=1).fit(model, loader())


def test_plateau_needs_monitor():
    a = sgd()
    with pytest.raises(ValueError, match="monitor"):
        parse_optimizers({"optimizer": a, "lr_scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(a)})


def test_bad_interval():
    a = sgd()
    with pytest.raises(ValueError, match="'step' or 'epoch'"):
        parse_optimizers({"optimizer": a, "lr_scheduler": {"scheduler": step_lr(a), "interval": "batch"}})


class WithScheduler(Regression):
    def __init__(self, config):
        super().__init__()
        self.config = config

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=1.0)
        return self.config(opt)


def _lr(trainer):
    return trainer.optimizers[0].param_groups[0]["lr"]


def test_epoch_scheduler_steps_once_per_epoch():
    trainer = make_trainer(max_epochs=3, limit_train_batches=4, limit_val_batches=0)
    trainer.fit(WithScheduler(lambda opt: ([opt], [step_lr(opt)])), loader())
    assert _lr(trainer) == pytest.approx(0.5 ** 3)


def test_step_scheduler_with_frequency():
    config = lambda opt: {"optimizer": opt, "lr_scheduler": {"scheduler": step_lr(opt), "interval": "step",
                                                              "frequency": 2}}
    trainer = make_trainer(max_epochs=1, limit_train_batches=6, limit_val_batches=0)
    trainer.fit(WithScheduler(config), loader())
    assert trainer.global_step == 6 and _lr(trainer) == pytest.approx(0.5 ** 3)


def test_plateau_scheduler_reads_monitored_metric():
    config = lambda opt: {"optimizer": opt, "lr_scheduler": {
        "scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5), "monitor": "val_loss"}}
    model = WithScheduler(config)
    model.validation_step = lambda batch, batch_idx: model.log("val_loss", 1.0)
    trainer = make_trainer(max_epochs=3, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0)
    trainer.fit(model, loader(), loader())
    assert _lr(trainer) == pytest.approx(0.5 ** 2)  # no improvement after the first epoch


def test_plateau_monitor_never_logged_lists_logged_keys():
    config = lambda opt: {"optimizer": opt, "lr_scheduler": {
        "scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(opt), "monitor": "val_acc"}}
    trainer = make_trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0)
    with pytest.raises(RuntimeError, match=r"'val_acc'.*logged metrics: \['train_loss', 'val_loss'\]"):
        trainer.fit(WithScheduler(config), loader(), loader())


def test_none_runs_training_step_without_stepping():
    model = WithScheduler(lambda opt: None)
    before = model.layer.weight.detach().clone()
    trainer = make_trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0)
    trainer.fit(model, loader())
    assert torch.equal(model.layer.weight, before) and trainer.optimizers == []


def test_two_optimizers_need_optimizer_idx_or_manual_optimization():
    model = WithScheduler(lambda opt: [opt, torch.optim.Adam(opt.param_groups[0]["params"])])
    with pytest.raises(ValueError, match="optimizer_idx.*automatic_optimization = False"):
        make_trainer(max_epochs=1).fit(model, loader())


def test_lr_schedulers_accessor():
    seen = {}

    class Model(WithScheduler):
        def on_train_start(self):
            seen["scheduler"] = self.lr_schedulers()
            seen["optimizer"] = self.optimizers()

    trainer = make_trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0)
    trainer.fit(Model(lambda opt: ([opt], [step_lr(opt)])), loader())
    assert isinstance(seen["scheduler"], torch.optim.lr_scheduler.StepLR)
    assert seen["optimizer"].optimizer is trainer.optimizers[0]


def test_step_plateau_scheduler_watches_validation_metric():
    config = lambda opt: {"optimizer": opt, "lr_scheduler": {
        "scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5), "monitor": "val_loss",
        "interval": "step", "frequency": 4}}
    model = WithScheduler(config)
    model.validation_step = lambda batch, batch_idx: model.log("val_loss", 1.0)
    trainer = make_trainer(max_epochs=1, limit_train_batches=8, limit_val_batches=1, val_check_interval=4,
                           num_sanity_val_steps=0)
    trainer.fit(model, loader(), loader())
    assert _lr(trainer) == pytest.approx(0.5)  # stepped at steps 4 and 8; no improvement the second time


def test_lr_scheduler_step_hook_steps_custom_schedulers():
    class EpochScheduler:
        """A scheduler with its own step signature (timm style): step(epoch)."""

        def __init__(self, optimizer):
            self.optimizer, self.epochs = optimizer, []

        def step(self, epoch):
            self.epochs.append(epoch)
            self.optimizer.param_groups[0]["lr"] = 1.0 / (epoch + 2)

        def state_dict(self):
            return {"epochs": self.epochs}

        def load_state_dict(self, state):
            self.epochs = state["epochs"]

    calls = []

    class Model(WithScheduler):
        def lr_scheduler_step(self, scheduler, metric):
            calls.append(metric)
            scheduler.step(epoch=self.current_epoch)

    model = Model(lambda opt: ([opt], [EpochScheduler(opt)]))
    trainer = make_trainer(max_epochs=3, limit_train_batches=2, limit_val_batches=0)
    trainer.fit(model, loader())
    assert calls == [None] * 3 and trainer.lr_scheduler_configs[0].scheduler.epochs == [0, 1, 2]
    assert _lr(trainer) == pytest.approx(1.0 / 4)


@pytest.mark.parametrize(("interval", "expected"), [
    ("step", [("batch", 0.5), ("batch", 0.25), ("epoch", 0.25), ("batch", 0.125), ("batch", 0.0625),
              ("epoch", 0.0625)]),
    ("epoch", [("batch", 1.0), ("batch", 0.5), ("epoch", 0.5), ("batch", 0.5), ("batch", 0.25), ("epoch", 0.25)])])
def test_schedulers_step_before_on_train_batch_end_as_in_lightning(interval, expected):
    # `expected` was recorded from Lightning 2.6 with the same module: a per-epoch scheduler steps after the
    # epoch's last batch, before on_train_batch_end and on_train_epoch_end see the learning rate.
    seen = []

    class Model(WithScheduler):
        def on_train_batch_end(self, outputs, batch, batch_idx):
            seen.append(("batch", _lr(self.trainer)))

        def on_train_epoch_end(self):
            seen.append(("epoch", _lr(self.trainer)))

    config = lambda opt: {"optimizer": opt, "lr_scheduler": {"scheduler": step_lr(opt), "interval": interval}}
    make_trainer(max_epochs=2, limit_val_batches=0).fit(Model(config), loader(n=8))
    assert seen == expected
