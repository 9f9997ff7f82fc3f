"""The minimal ModelCheckpoint and EarlyStopping: file layout, top-k by a monitored metric, ckpt_path="best" /
"last", stopping on patience, and the error for a monitored key that was never logged."""
import os

import pytest
import torch

import loops as L
from fabric_kit.checkpoint import read_checkpoint
from loops.callbacks import EarlyStopping, ModelCheckpoint
from tests.helpers.loops import Regression, loader, make_trainer
from tests.helpers.loops import ScriptedLoss as Scripted


def test_default_layout_epoch_step_files(tmp_path):
    trainer = L.Trainer(default_root_dir=tmp_path, max_epochs=2, accelerator="cpu", enable_progress_bar=False)
    trainer.fit(Regression(), loader(), loader(n=8))
    folder = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    assert os.listdir(folder) == ["epoch=1-step=16.ckpt"]  # save_top_k=1 without monitor keeps the latest
    assert trainer.checkpoint_callback.best_model_path == str(folder / "epoch=1-step=16.ckpt")


def test_checkpoint_callback_with_checkpointing_disabled_is_an_error():
    with pytest.raises(ValueError, match=r"enable_checkpointing=False, but callbacks holds \['ModelCheckpoint'\]"):
        L.Trainer(enable_checkpointing=False, callbacks=[ModelCheckpoint()])


def test_top_k_by_monitor_and_best_path(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=2, save_last=True,
                                 filename="{epoch}-{val_loss:.1f}")
    trainer = make_trainer(max_epochs=4, callbacks=[checkpoint], num_sanity_val_steps=0)
    model = Scripted([3.0, 1.0, 2.0, 4.0])
    trainer.fit(model, loader(), loader(n=8))
    assert sorted(os.listdir(tmp_path)) == ["epoch=1-val_loss=1.0.ckpt", "epoch=2-val_loss=2.0.ckpt", "last.ckpt"]
    assert checkpoint.best_model_path.endswith("epoch=1-val_loss=1.0.ckpt")
    assert checkpoint.best_model_score.item() == 1.0
    assert checkpoint.last_model_path == str(tmp_path / "last.ckpt")
    # validate() after fit defaults to the best checkpoint; "last" resolves too
    assert trainer.validate(dataloaders=loader(n=8), verbose=False) == [{"val_loss": 4.0}]  # epoch-3 script
    resumed = make_trainer(max_epochs=5, callbacks=[ModelCheckpoint(dirpath=tmp_path, monitor="val_loss",
                                                                    save_last=True)], num_sanity_val_steps=0)
    resumed.checkpoint_callback.last_model_path = checkpoint.last_model_path
    resumed.fit(Scripted([3.0]), loader(), loader(n=8), ckpt_path="last")
    assert resumed.global_step == 40 and resumed.current_epoch == 5


def test_best_in_a_new_trainer_is_read_from_the_checkpoint_directory(tmp_path):
    """`test --ckpt_path best` after a fit in another process: the newest checkpoint in dirpath records the best."""
    def callback():
        return ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=1, save_last=True)

    make_trainer(max_epochs=3, callbacks=[callback()], num_sanity_val_steps=0).fit(
        Scripted([3.0, 1.0, 2.0]), loader(), loader(n=8))
    best = tmp_path / "epoch=1-step=16.ckpt"
    assert sorted(os.listdir(tmp_path)) == [best.name, "last.ckpt"]
    model = Scripted([7.0])
    make_trainer(callbacks=[callback()]).validate(model, loader(n=8), ckpt_path="best", verbose=False)
    saved = read_checkpoint(best)["state_dict"]
    assert all(torch.equal(value, saved[name]) for name, value in model.state_dict().items())
    with pytest.raises(ValueError, match="no checkpoint in its dirpath records one"):
        make_trainer(callbacks=[ModelCheckpoint(dirpath=tmp_path / "empty", monitor="val_loss")]).validate(
            Scripted([1.0]), loader(n=8), ckpt_path="best")


def test_monitor_never_logged_lists_logged_keys(tmp_path):
    trainer = make_trainer(max_epochs=1, callbacks=[ModelCheckpoint(dirpath=tmp_path, monitor="val_acc")],
                           num_sanity_val_steps=0)
    with pytest.raises(KeyError, match=r"monitor='val_acc'.*logged metrics: \['train_loss', 'val_loss'\]"):
        trainer.fit(Regression(), loader(), loader(n=8))
    stopper = EarlyStopping(monitor="val_acc")
    with pytest.raises(RuntimeError, match=r"monitor='val_acc'.*logged metrics: \['train_loss', 'val_loss'\]"):
        make_trainer(max_epochs=1, callbacks=[stopper], num_sanity_val_steps=0).fit(Regression(), loader(),
                                                                                   loader(n=8))


def test_early_stopping_patience():
    stopper = EarlyStopping(monitor="val_loss", patience=2)
    trainer = make_trainer(max_epochs=20, callbacks=[stopper], num_sanity_val_steps=0)
    trainer.fit(Scripted([5.0, 4.0, 4.5, 4.2, 1.0]), loader(), loader(n=8))
    assert trainer.current_epoch == 4 and stopper.stopped_epoch == 3 and stopper.wait_count == 2
    assert stopper.best_score.item() == 4.0


def test_early_stopping_on_train_metric_without_validation():
    class Model(Regression):
        def on_train_epoch_end(self):
            self.log("flat", 1.0)

    stopper = EarlyStopping(monitor="flat", patience=1)
    trainer = make_trainer(max_epochs=10, callbacks=[stopper], limit_val_batches=0)
    trainer.fit(Model(), loader())
    assert trainer.current_epoch == 2  # first epoch sets the best, the second does not improve


def test_checkpoint_state_is_saved_with_the_run(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss")
    trainer = make_trainer(max_epochs=2, callbacks=[checkpoint], num_sanity_val_steps=0)
    trainer.fit(Scripted([2.0, 1.0]), loader(), loader(n=8))
    from loops.core.saving import read_checkpoint

    saved = read_checkpoint(checkpoint.best_model_path)["callbacks"][checkpoint.state_key]
    assert saved["best_model_path"] == checkpoint.best_model_path
    assert torch.equal(saved["best_model_score"], torch.tensor(1.0))
