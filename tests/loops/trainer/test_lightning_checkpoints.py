"""Checkpoints are portable both ways with Lightning 2.x (the `lightning` package of the test extra): loops resumes a
file Lightning's Trainer wrote (weights, optimizer, scheduler, epoch, step, callback state) and continues exactly as
Lightning would; Lightning's load_from_checkpoint and fit(ckpt_path=...) take a file loops wrote. The data never
shuffles, so both Trainers see the same batches and end with equal weights."""
import shutil

import pytest
import torch
from torch import nn

import loops as L
from loops import callbacks as loops_callbacks
from tests.helpers.loops import loader

pl = pytest.importorskip("lightning.pytorch")
from lightning.pytorch import callbacks as pl_callbacks  # noqa: E402


def module_class(base):
    """The same LightningModule written once, for Lightning's base class or loops'."""

    class Model(base):
        def __init__(self, lr: float = 0.1, width: int = 4):
            super().__init__()
            self.save_hyperparameters()
            self.layer = nn.Linear(width, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = nn.functional.mse_loss(self.layer(x), y)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", nn.functional.mse_loss(self.layer(x), y))

        def test_step(self, batch, batch_idx):
            x, y = batch
            self.log("test_loss", nn.functional.mse_loss(self.layer(x), y))

        def configure_optimizers(self):
            optimizer = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)
            return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 1, 0.5)}

    return Model


LightningModel, LoopsModel = module_class(pl.LightningModule), module_class(L.LightningModule)
SIDES = {"lightning": (pl, pl_callbacks, LightningModel), "loops": (L, loops_callbacks, LoopsModel)}
BASES = {"lightning": pl.LightningModule, "loops": L.LightningModule}


def fit(side, root, epochs, ckpt_path=None, checkpoint=None, early_stopping=True, **flags):
    """Train 8 batches an epoch (validation: 2 batches) on `side`'s Trainer; `checkpoint` configures a
    ModelCheckpoint writing to root/ckpt. Returns the trainer, the model and the callbacks."""
    package, callbacks, model_class = SIDES[side]
    made = []
    if checkpoint is not None:
        made.append(callbacks.ModelCheckpoint(dirpath=root / "ckpt", **checkpoint))
    if early_stopping:
        made.append(callbacks.EarlyStopping("val_loss", patience=3))
    torch.manual_seed(0)
    model = model_class()
    trainer = package.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                              enable_model_summary=False, default_root_dir=root, max_epochs=epochs, callbacks=made,
                              enable_checkpointing=checkpoint is not None, **flags)
    trainer.fit(model, loader(), loader(n=8), ckpt_path=ckpt_path)
    return trainer, model, made


TOP_K = dict(monitor="val_loss", save_top_k=2, save_last=True)


def batches_stepped(trainer):
    """Batches that ended with an optimizer step: the loggers' step."""
    if isinstance(trainer, L.Trainer):
        return trainer.run_state.progress.batches_stepped
    return trainer.fit_loop.epoch_loop._batches_that_stepped


def _equal(a, b):
    """Nested state (dicts, lists, tensors, numbers) equal, tensors exactly."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return torch.equal(torch.as_tensor(a), torch.as_tensor(b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=False))
    return a == b


@pytest.mark.parametrize("name, arguments", [
    ("ModelCheckpoint", dict(monitor="val_loss")), ("ModelCheckpoint", dict(every_n_train_steps=3)),
    ("ModelCheckpoint", dict(monitor="val_loss", mode="max", every_n_epochs=2)),
    ("EarlyStopping", dict(monitor="val_loss", mode="max")), ("Timer", dict(duration="00:01:00:00"))])
def test_callback_state_keys_are_lightnings(name, arguments):
    ours, theirs = getattr(loops_callbacks, name)(**arguments), getattr(pl_callbacks, name)(**arguments)
    assert ours.state_key == theirs.state_key


def test_loops_restores_everything_a_lightning_checkpoint_holds(tmp_path):
    fit("lightning", tmp_path, 2, checkpoint=TOP_K)
    path = tmp_path / "ckpt" / "last.ckpt"
    saved = torch.load(path)
    # Resumed with max_epochs reached: fit restores and stops, leaving the restored state to inspect.
    trainer, model, (checkpoint, stopping) = fit("loops", tmp_path, 2, ckpt_path=path, checkpoint=TOP_K,
                                                 num_sanity_val_steps=0)
    assert trainer.current_epoch == 2 and trainer.global_step == 16 and batches_stepped(trainer) == 16
    assert _equal(model.state_dict(), saved["state_dict"])
    assert _equal(trainer.optimizers[0].state_dict(), saved["optimizer_states"][0])
    assert _equal(trainer.lr_scheduler_configs[0].scheduler.state_dict(), saved["lr_schedulers"][0])
    assert _equal(checkpoint.state_dict(), saved["callbacks"][checkpoint.state_key])
    assert checkpoint.best_model_path and checkpoint.best_model_path == saved["callbacks"][checkpoint.state_key][
        "best_model_path"]
    assert _equal(stopping.state_dict(), saved["callbacks"][stopping.state_key])
    assert model.hparams == {"lr": 0.1, "width": 4}


def test_loops_continues_a_lightning_run_as_lightning_does(tmp_path):
    _, uninterrupted, _ = fit("lightning", tmp_path / "reference", 4)
    fit("lightning", tmp_path, 2, checkpoint=TOP_K)
    shutil.copytree(tmp_path / "ckpt", tmp_path / "saved")
    path = tmp_path / "ckpt" / "last.ckpt"
    resumed = {}
    for side in ("lightning", "loops"):  # each continues in the same checkpoint folder, from the same files
        shutil.rmtree(tmp_path / "ckpt")
        shutil.copytree(tmp_path / "saved", tmp_path / "ckpt")
        resumed[side] = fit(side, tmp_path, 4, ckpt_path=path, checkpoint=TOP_K)
    (pl_trainer, pl_model, (pl_checkpoint, pl_stopping)) = resumed["lightning"]
    (trainer, model, (checkpoint, stopping)) = resumed["loops"]
    assert trainer.current_epoch == pl_trainer.current_epoch == 4
    assert trainer.global_step == pl_trainer.global_step == 32
    assert batches_stepped(trainer) == batches_stepped(pl_trainer) == 32
    assert torch.equal(model.layer.weight, uninterrupted.layer.weight)
    assert torch.equal(model.layer.weight, pl_model.layer.weight)
    assert checkpoint.best_model_path == pl_checkpoint.best_model_path
    assert torch.equal(checkpoint.best_model_score, pl_checkpoint.best_model_score)
    assert sorted(checkpoint.best_k_models) == sorted(pl_checkpoint.best_k_models)
    assert stopping.wait_count == pl_stopping.wait_count and torch.equal(stopping.best_score, pl_stopping.best_score)


def test_loops_stops_a_resumed_lightning_run_at_the_same_max_steps(tmp_path):
    _, uninterrupted, _ = fit("lightning", tmp_path / "reference", -1, early_stopping=False, max_steps=20)
    fit("lightning", tmp_path, 2, checkpoint=TOP_K)
    trainer, model, _ = fit("loops", tmp_path / "resume", -1, ckpt_path=tmp_path / "ckpt" / "last.ckpt",
                            early_stopping=False, max_steps=20)
    assert trainer.global_step == batches_stepped(trainer) == 20 and trainer.current_epoch == 3
    assert torch.equal(model.layer.weight, uninterrupted.layer.weight)


@pytest.mark.parametrize("saved_in", ["on_train_batch_end", "validation"])
def test_loops_resumes_a_mid_epoch_lightning_checkpoint_at_its_batch(tmp_path, saved_in):
    # Saved after batch 3 of 8: by ModelCheckpoint(every_n_train_steps) in on_train_batch_end, or after the
    # validation that val_check_interval runs there. Lightning keeps no loader position: loops skips the 3 batches.
    flags = dict(val_check_interval=3) if saved_in == "validation" else {}
    checkpoint = dict(monitor="val_loss", save_top_k=-1) if flags else dict(every_n_train_steps=3, save_top_k=-1)
    pl_trainer, uninterrupted, _ = fit("lightning", tmp_path, 2, checkpoint=checkpoint, **flags)
    with pytest.warns(UserWarning, match="after batch 3 of epoch 0 and holds no position of the training loader"):
        trainer, model, _ = fit("loops", tmp_path / "resume", 2, ckpt_path=tmp_path / "ckpt" / "epoch=0-step=3.ckpt",
                                **flags)
    assert trainer.global_step == 16 and batches_stepped(trainer) == batches_stepped(pl_trainer) == 16
    assert torch.equal(model.layer.weight, uninterrupted.layer.weight)


def test_loops_reads_lightning_weights_for_evaluation_and_load_from_checkpoint(tmp_path):
    pl_trainer, pl_model, _ = fit("lightning", tmp_path, 1, checkpoint=dict(save_last=True))
    path = str(tmp_path / "ckpt" / "last.ckpt")
    loaded = LoopsModel.load_from_checkpoint(path, lr=0.05)
    assert loaded.hparams == {"lr": 0.05, "width": 4}
    assert torch.equal(loaded.layer.weight, pl_model.layer.weight)
    expected = {"validate": pl_trainer.validate(pl_model, loader(n=8), verbose=False),
                "test": pl_trainer.test(pl_model, loader(n=8), verbose=False)}
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_checkpointing=False)
    for stage, results in expected.items():
        fresh = LoopsModel()
        assert getattr(trainer, stage)(fresh, loader(n=8), ckpt_path=path, verbose=False) == results
        assert torch.equal(fresh.layer.weight, pl_model.layer.weight)


def test_weights_only_lightning_checkpoint_cannot_resume_fit(tmp_path):
    fit("lightning", tmp_path, 1, checkpoint=dict(save_weights_only=True))
    with pytest.raises(KeyError, match="holds only the model.*weights_only=True"):
        fit("loops", tmp_path, 2, ckpt_path=tmp_path / "ckpt" / "epoch=0-step=8.ckpt")


def test_lightning_loads_every_checkpoint_loops_writes(tmp_path):
    trainer, model, _ = fit("loops", tmp_path, 3, checkpoint=TOP_K)
    trainer.save_checkpoint(tmp_path / "ckpt" / "weights.ckpt", weights_only=True)
    files = sorted((tmp_path / "ckpt").glob("*.ckpt"))
    assert len(files) == 4  # top-2, last, weights
    for path in files:
        saved = torch.load(path)  # torch.load's defaults, as Lightning reads it: weights_only=True
        loaded = LightningModel.load_from_checkpoint(path)
        assert loaded.hparams == {"lr": 0.1, "width": 4}
        assert _equal(loaded.state_dict(), saved["state_dict"])
    assert torch.equal(LightningModel.load_from_checkpoint(tmp_path / "ckpt" / "last.ckpt").layer.weight,
                       model.layer.weight)


def test_lightning_restores_everything_a_loops_checkpoint_holds(tmp_path):
    fit("loops", tmp_path, 2, checkpoint=TOP_K)
    path = tmp_path / "ckpt" / "last.ckpt"
    saved = torch.load(path)
    trainer, model, (checkpoint, stopping) = fit("lightning", tmp_path, 2, ckpt_path=path, checkpoint=TOP_K,
                                                 num_sanity_val_steps=0)
    assert trainer.current_epoch == 2 and trainer.global_step == 16 and batches_stepped(trainer) == 16
    assert _equal(trainer.optimizers[0].state_dict(), saved["optimizer_states"][0])
    assert _equal(trainer.lr_scheduler_configs[0].scheduler.state_dict(), saved["lr_schedulers"][0])
    restored = checkpoint.state_dict()
    assert restored.pop("current_score") is None  # the one entry Lightning's ModelCheckpoint does not restore
    assert _equal(restored, {k: v for k, v in saved["callbacks"][checkpoint.state_key].items() if k != "current_score"})
    assert _equal(stopping.state_dict(), saved["callbacks"][stopping.state_key])


def test_lightning_continues_a_loops_run(tmp_path):
    _, uninterrupted, _ = fit("lightning", tmp_path / "reference", 4)
    fit("loops", tmp_path, 2, checkpoint=TOP_K)
    trainer, model, _ = fit("lightning", tmp_path, 4, ckpt_path=tmp_path / "ckpt" / "last.ckpt", checkpoint=TOP_K)
    assert trainer.global_step == 32 and batches_stepped(trainer) == 32
    assert torch.equal(model.layer.weight, uninterrupted.layer.weight)


@pytest.mark.parametrize("saved_in", ["on_train_batch_end", "validation"])
def test_lightning_resumes_a_mid_epoch_loops_checkpoint_at_its_step(tmp_path, saved_in):
    # Lightning restarts a plain DataLoader's epoch from its first batch (it warns), so only the counters are
    # compared: it ends the epoch after the 5 batches left and the run at the same step as an uninterrupted one.
    flags = dict(val_check_interval=3) if saved_in == "validation" else {}
    checkpoint = dict(monitor="val_loss", save_top_k=-1) if flags else dict(every_n_train_steps=3, save_top_k=-1)
    reference, _, _ = fit("lightning", tmp_path / "reference", 2, **flags)
    fit("loops", tmp_path, 2, checkpoint=checkpoint, **flags)
    trainer, _, _ = fit("lightning", tmp_path / "resume", 2, ckpt_path=tmp_path / "ckpt" / "epoch=0-step=3.ckpt",
                        **flags)
    assert trainer.global_step == reference.global_step == 16
    assert batches_stepped(trainer) == batches_stepped(reference) == 16


def dict_module_class(base):
    """A module taking its hyperparameters as one dict: the checkpoint names that argument (`hparams_name`)."""

    class DictModel(base):
        def __init__(self, config):
            super().__init__()
            self.save_hyperparameters(config)
            self.layer = nn.Linear(config["width"], 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.mse_loss(self.layer(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    return DictModel


@pytest.mark.parametrize("writer", ["lightning", "loops"])
def test_hyperparameters_saved_as_one_dict_come_back_as_that_argument(tmp_path, writer):
    package = SIDES[writer][0]
    model = dict_module_class(BASES[writer])({"lr": 0.1, "width": 4})
    trainer = package.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                              enable_checkpointing=False, max_epochs=1, default_root_dir=tmp_path)
    trainer.fit(model, loader())
    trainer.save_checkpoint(tmp_path / "dict.ckpt")
    for base in BASES.values():
        loaded = dict_module_class(base).load_from_checkpoint(tmp_path / "dict.ckpt", lr=0.5)
        assert loaded.hparams == {"lr": 0.5, "width": 4}
        assert torch.equal(loaded.layer.weight, model.layer.weight)


@pytest.mark.parametrize("saved_epochs, averaging", [(1, False), (3, True)])
def test_stochastic_weight_averaging_state_of_lightning_before_averaging_began(tmp_path, saved_epochs, averaging):
    # Lightning averages at each SWA epoch's start into an AveragedModel, loops at its end: only a checkpoint from
    # before the first averaged epoch carries over; a later one is an error saying so.
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, max_epochs=saved_epochs, default_root_dir=tmp_path,
                         callbacks=[pl_callbacks.StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=3)])
    torch.manual_seed(0)
    trainer.fit(LightningModel(), loader())
    trainer.save_checkpoint(tmp_path / "swa.ckpt")
    swa = loops_callbacks.StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=3)
    resume = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                       enable_checkpointing=False, max_epochs=4, callbacks=[swa], limit_val_batches=0)
    if averaging:
        with pytest.raises(ValueError, match="Lightning's, saved after averaging began"):
            resume.fit(LoopsModel(), loader(), ckpt_path=tmp_path / "swa.ckpt")
        return
    resume.fit(LoopsModel(), loader(), ckpt_path=tmp_path / "swa.ckpt")
    assert resume.global_step == 32 and swa.n_averaged == 2  # epochs 3 and 4 (1-based) averaged here
