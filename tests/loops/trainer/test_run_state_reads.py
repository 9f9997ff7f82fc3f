"""What users read off a Trainer while and after it runs, checked on Lightning 2.6 and on loops alike (`both`):
the checkpoint path, the state and its enums, max_epochs, the dataloaders, the strategy, the metrics."""

import pytest
import torch
from torch.utils.data import DataLoader

import loops
from fabric_kit.strategies import SingleDeviceStrategy
from loops.trainer import states
from tests.helpers.both_trainers import QUIET, both, pl, quiet  # noqa: F401  (quiet: a fixture used below)

pytestmark = pytest.mark.usefixtures("quiet")


def module_class(L):
    class Model(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            loss = self.layer(batch).pow(2).mean()
            self.log("train_loss", loss, prog_bar=True)
            return loss

        def validation_step(self, batch, batch_idx):
            self.log("val_loss", self.layer(batch).pow(2).mean(), prog_bar=True)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return Model


def data(n=8):
    return DataLoader(torch.randn(n, 2), batch_size=2)


def test_the_state_enums_have_lightnings_names_and_values():
    from lightning.pytorch.trainer import states as pl_states

    for name in ("TrainerStatus", "TrainerFn", "RunningStage"):
        ours, theirs = getattr(states, name), getattr(pl_states, name)
        assert [(e.name, e.value) for e in ours] == [(e.name, e.value) for e in theirs]
    for enums in (states, pl_states):
        assert enums.TrainerFn.FITTING == "FIT" and enums.TrainerFn("fit") is enums.TrainerFn.FITTING
    assert states.RunningStage.SANITY_CHECKING.evaluating and states.RunningStage.VALIDATING.dataloader_prefix == "val"


@both
def test_status_is_running_while_fit_runs_and_finished_after(L):
    class Watch(L.Callback):
        def on_train_batch_start(self, trainer, *args):
            self.seen = (trainer.state.status, trainer.state.fn, trainer.state.stage, trainer.state.finished)

    watch = Watch()
    trainer = L.Trainer(max_epochs=1, limit_train_batches=1, callbacks=[watch], **QUIET)
    assert (trainer.state.status, trainer.state.fn, trainer.state.finished) == ("initializing", None, False)
    trainer.fit(module_class(L)(), data(), data(4))
    assert watch.seen == ("running", "fit", "train", False)
    assert (trainer.state.status, trainer.state.finished, trainer.state.stopped) == ("finished", True, True)


@both
def test_max_epochs_is_none_until_fit_decides(L):
    trainer = L.Trainer(max_steps=-1, **QUIET)
    assert trainer.max_epochs is None
    trainer = L.Trainer(max_steps=2, **QUIET)
    trainer.fit(module_class(L)(), data())
    assert trainer.max_epochs == -1


@both
def test_fit_loop_max_epochs_extends_a_resumed_run(L, tmp_path):
    trainer = L.Trainer(max_epochs=1, **QUIET)
    trainer.fit(module_class(L)(), data())
    trainer.save_checkpoint(tmp_path / "one.ckpt")
    assert trainer.ckpt_path is None
    resumed = L.Trainer(max_epochs=1, **QUIET)
    resumed.fit_loop.max_epochs = 3
    resumed.fit(module_class(L)(), data(), ckpt_path=str(tmp_path / "one.ckpt"))
    assert (resumed.current_epoch, resumed.global_step, resumed.max_epochs) == (3, 12, 3)
    assert resumed.ckpt_path == str(tmp_path / "one.ckpt")
    shorter = L.Trainer(max_epochs=0, **QUIET)  # the checkpoint is past its last epoch: refused
    with pytest.raises(Exception, match=r"current_epoch=1, .*Trainer\(max_epochs=0\)"):
        shorter.fit(module_class(L)(), data(), ckpt_path=str(tmp_path / "one.ckpt"))


@both
def test_the_dataloaders_are_the_users_own(L):
    train, val, tests = data(), data(4), [data(4), data(6)]
    trainer = L.Trainer(max_epochs=1, num_sanity_val_steps=0, **QUIET)
    model = module_class(L)()
    trainer.fit(model, train, val)
    assert trainer.train_dataloader is train and trainer.val_dataloaders is val
    trainer.validate(model, dataloaders=[val], verbose=False)
    assert trainer.val_dataloaders == [val]

    class Tested(module_class(L)):
        def test_step(self, batch, batch_idx, dataloader_idx=0):
            pass

    trainer.test(Tested(), dataloaders=tests, verbose=False)
    assert trainer.test_dataloaders == tests


@both
def test_strategy_model_and_metrics(L):
    trainer = L.Trainer(max_epochs=1, **QUIET)
    model = module_class(L)()
    trainer.fit(model, data(), data(4))
    strategy_class = SingleDeviceStrategy if L is loops else pl.strategies.SingleDeviceStrategy
    assert isinstance(trainer.strategy, strategy_class) and trainer.model is model
    assert {"train_loss", "val_loss"} <= set(trainer.progress_bar_metrics)
    assert all(type(v) is float for v in trainer.progress_bar_metrics.values())
    trainer.validate(model, data(4), verbose=False)
    assert set(trainer.callback_metrics) == {"val_loss"}  # each stage call starts with no metrics
