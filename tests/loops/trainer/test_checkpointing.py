"""Trainer checkpoints: contents, resuming fit where it stopped (end of epoch and mid-epoch), ckpt_path forms and
rebuilding modules and datamodules with load_from_checkpoint."""
import warnings

import pytest
import torch
from torch import nn

import loops as L
from tests.helpers.loops import Regression, loader, make_trainer


class Momentum(Regression):
    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)]


class SaveAt(L.Callback):
    def __init__(self, path, epoch=None, batch=None):
        self.path, self.epoch, self.batch = path, epoch, batch
        self.count = 0

    @property
    def state_key(self):
        return self._generate_state_key(epoch=self.epoch, batch=self.batch)

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count = state["count"]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.count += 1
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            trainer.save_checkpoint(self.path)
            trainer.should_stop = True

    def on_train_epoch_end(self, trainer, pl_module):
        if self.batch is None and trainer.current_epoch == self.epoch:
            trainer.save_checkpoint(self.path)
            trainer.should_stop = True


def _train(epochs, shuffle, callbacks=(), ckpt_path=None, model=None, **flags):
    torch.manual_seed(1)
    model = model or Momentum()
    trainer = make_trainer(max_epochs=epochs, callbacks=list(callbacks), limit_val_batches=0, **flags)
    trainer.fit(model, loader(shuffle=shuffle), ckpt_path=ckpt_path)
    return model, trainer


@pytest.mark.parametrize("shuffle", [False, True])
def test_resume_from_epoch_end_equals_uninterrupted(tmp_path, shuffle):
    reference, _ = _train(3, shuffle)
    path = tmp_path / "epoch0.ckpt"
    _train(3, shuffle, [SaveAt(path, epoch=0)])
    torch.manual_seed(123)  # the checkpoint's RNG state must win over whatever ran since
    resumed_model = Momentum()
    counter = SaveAt(tmp_path / "again.ckpt", epoch=0)  # same state key; epoch 0 does not run again
    resumed, trainer = _train(3, shuffle, [counter], ckpt_path=path, model=resumed_model)
    assert trainer.current_epoch == 3 and trainer.global_step == 24
    assert counter.count == 24  # callback state restored (8 batches before the checkpoint) + 16 after
    assert torch.equal(resumed.layer.weight, reference.layer.weight)


def test_resume_after_an_epoch_cut_short_by_limit_train_batches(tmp_path):
    # The pass stops at batch 5 of 8; the checkpoint at the epoch's end must resume at the next epoch's shuffle.
    reference, _ = _train(3, True, limit_train_batches=5)
    path = tmp_path / "cut.ckpt"
    _train(3, True, [SaveAt(path, epoch=0)], limit_train_batches=5)
    assert _read(path)["train_dataloader"]["epoch"] == 1 and _read(path)["train_dataloader"]["samples"] == 0
    resumed, trainer = _train(3, True, ckpt_path=path, limit_train_batches=5)
    assert trainer.global_step == 15 and torch.equal(resumed.layer.weight, reference.layer.weight)


@pytest.mark.parametrize("shuffle", [False, True])
def test_resume_mid_epoch_equals_uninterrupted(tmp_path, shuffle):
    reference, _ = _train(2, shuffle)
    path = tmp_path / "mid.ckpt"
    _train(2, shuffle, [SaveAt(path, epoch=0, batch=3)])
    assert _read(path)["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["processed"] == 4  # complete
    resumed, trainer = _train(2, shuffle, ckpt_path=path)
    assert trainer.global_step == 16
    # the saving batch's step counted once: loggers' steps agree
    assert trainer.run_state.progress.batches_stepped == 16
    assert torch.equal(resumed.layer.weight, reference.layer.weight)


def test_resume_from_the_last_batch_of_an_epoch(tmp_path):
    # Saved in on_train_batch_end of batch 8 of 8: the epoch's scheduler already stepped, the epoch is not over.
    reference, _ = _train(2, True)
    path = tmp_path / "last_batch.ckpt"
    _train(2, True, [SaveAt(path, epoch=0, batch=7)])
    resumed, trainer = _train(2, True, ckpt_path=path)
    assert trainer.global_step == trainer.run_state.progress.batches_stepped == 16
    assert torch.equal(resumed.layer.weight, reference.layer.weight)


def test_checkpoint_contents(tmp_path):
    class DataModule(L.LightningDataModule):
        def __init__(self, batch_size=4):
            super().__init__()
            self.save_hyperparameters()

        def train_dataloader(self):
            return loader(batch_size=self.hparams.batch_size)

        def state_dict(self):
            return {"seen": 7}

    path = tmp_path / "c.ckpt"
    model = Momentum(lr=0.3)
    trainer = make_trainer(max_epochs=1, callbacks=[SaveAt(path, epoch=0)], limit_val_batches=0)
    trainer.fit(model, datamodule=DataModule(batch_size=8))
    checkpoint = _read(path)
    assert {"epoch", "global_step", "state_dict", "loops", "callbacks", "optimizer_states", "lr_schedulers",
            "hyper_parameters", "datamodule_hyper_parameters", DataModule.__qualname__} <= set(checkpoint)
    assert checkpoint["epoch"] == 0 and checkpoint["global_step"] == 4
    assert checkpoint["hyper_parameters"] == {"lr": 0.3}
    assert checkpoint["datamodule_hyper_parameters"] == {"batch_size": 8}
    assert checkpoint[DataModule.__qualname__] == {"seen": 7}
    assert list(checkpoint["callbacks"].values()) == [{"count": 4}]
    assert set(checkpoint["state_dict"]) == {"layer.weight", "layer.bias"}
    restored = DataModule.load_from_checkpoint(path)
    assert restored.hparams.batch_size == 8


def _read(path):
    from loops.core.saving import read_checkpoint

    return read_checkpoint(path)


def test_weights_only_checkpoint_cannot_resume_fit(tmp_path):
    path = tmp_path / "w.ckpt"
    model, trainer = _train(1, False)
    trainer.save_checkpoint(path, weights_only=True)
    assert "optimizer_states" not in _read(path)
    with pytest.raises(KeyError, match="weights_only=True"):
        _train(2, False, ckpt_path=path)


def test_ckpt_path_errors(tmp_path):
    with pytest.raises(ValueError, match=r'ckpt_path="best" needs a checkpoint callback'):
        _train(1, False, ckpt_path="best")
    with pytest.raises(FileNotFoundError, match="missing.ckpt.*does not exist; accepted: None, 'last', 'best'"):
        _train(1, False, ckpt_path=tmp_path / "missing.ckpt")


def test_validate_with_ckpt_path_loads_the_weights(tmp_path):
    model, trainer = _train(1, False)
    path = tmp_path / "v.ckpt"
    trainer.save_checkpoint(path)
    expected = make_trainer().validate(model, loader(), verbose=False)
    fresh = Momentum()
    assert make_trainer().validate(fresh, loader(), ckpt_path=path, verbose=False) == expected
    assert torch.equal(fresh.layer.weight, model.layer.weight)


def test_load_from_checkpoint_kwargs_override_hparams(tmp_path):
    model, trainer = _train(1, False)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    loaded = Momentum.load_from_checkpoint(path, lr=0.7)
    assert loaded.hparams.lr == 0.7 and not loaded.training
    assert torch.equal(loaded.layer.weight, model.layer.weight)
    assert Momentum.load_from_checkpoint(path).hparams.lr == 0.1


class BuiltInConfigureModel(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = None

    def configure_model(self):
        if self.layer is None:
            self.layer = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return nn.functional.mse_loss(self.layer(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_load_from_checkpoint_calls_configure_model_before_loading_the_weights(tmp_path):
    model = BuiltInConfigureModel()
    trainer = make_trainer(max_epochs=1)
    trainer.fit(model, loader())
    trainer.save_checkpoint(tmp_path / "c.ckpt")
    loaded = BuiltInConfigureModel.load_from_checkpoint(tmp_path / "c.ckpt")  # its layer exists only after the call
    assert torch.equal(loaded.layer.weight, model.layer.weight)


class AutoEncoder(L.LightningModule):
    def __init__(self, encoder: nn.Module, decoder: nn.Module, width: int = 4):
        super().__init__()
        self.save_hyperparameters(ignore=["encoder", "decoder"])
        self.encoder, self.decoder = encoder, decoder

    def training_step(self, batch, batch_idx):
        x = batch[0]
        return nn.functional.mse_loss(self.decoder(self.encoder(x)), x)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_load_from_checkpoint_with_modules_passed_to_init(tmp_path):
    model = AutoEncoder(nn.Linear(4, 2), nn.Linear(2, 4))
    trainer = make_trainer(max_epochs=1)
    trainer.fit(model, loader())
    path = tmp_path / "ae.ckpt"
    trainer.save_checkpoint(path)
    assert _read(path)["hyper_parameters"] == {"width": 4}
    loaded = AutoEncoder.load_from_checkpoint(path, encoder=nn.Linear(4, 2), decoder=nn.Linear(2, 4))
    assert torch.equal(loaded.encoder.weight, model.encoder.weight)
    assert torch.equal(loaded.decoder.bias, model.decoder.bias)


def test_unstorable_hparams_warn_and_are_left_out(tmp_path):
    class Keeps(AutoEncoder):
        def __init__(self, encoder: nn.Module, decoder: nn.Module, width: int = 4):
            L.LightningModule.__init__(self)
            self.save_hyperparameters()
            self.encoder, self.decoder = encoder, decoder

    model = Keeps(nn.Linear(4, 2), nn.Linear(2, 4))
    assert set(model.hparams) == {"encoder", "decoder", "width"}
    trainer = make_trainer(max_epochs=1)
    trainer.fit(model, loader())
    with pytest.warns(UserWarning, match=r"\['encoder', 'decoder'\].*not stored"):
        trainer.save_checkpoint(tmp_path / "k.ckpt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = Keeps.load_from_checkpoint(tmp_path / "k.ckpt", encoder=nn.Linear(4, 2), decoder=nn.Linear(2, 4))
    assert torch.equal(loaded.encoder.weight, model.encoder.weight)


def test_resume_from_a_checkpoint_saved_after_fit(tmp_path):
    reference, _ = _train(3, True)
    path = tmp_path / "after.ckpt"
    _, trainer = _train(1, True)
    trainer.save_checkpoint(path)
    resumed, trainer = _train(3, True, ckpt_path=path)
    assert trainer.global_step == 24
    assert torch.equal(resumed.layer.weight, reference.layer.weight)


def test_fit_refuses_a_checkpoint_of_another_loops_format(tmp_path):
    model, trainer = _train(1, False)
    trainer.save_checkpoint(tmp_path / "now.ckpt")
    checkpoint = torch.load(tmp_path / "now.ckpt")
    checkpoint["loops_format_version"] = 1
    torch.save(checkpoint, tmp_path / "old.ckpt")
    with pytest.raises(ValueError, match="loops' checkpoint format 1; fit resumes format 2 only"):
        _train(2, False, ckpt_path=tmp_path / "old.ckpt")
    assert torch.equal(Momentum.load_from_checkpoint(tmp_path / "old.ckpt").layer.weight, model.layer.weight)
