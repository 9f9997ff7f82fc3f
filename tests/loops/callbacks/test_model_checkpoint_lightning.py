"""ModelCheckpoint as Lightning 2.6 has it, run on Lightning and on loops (`both`): `monitor="step"` /
`"epoch"` keep the top k, `to_yaml` writes the kept files' scores, and a step-triggered save monitoring a validation
metric waits for it without a warning, then ranks the latest value."""
import importlib
import os
import warnings

import pytest
import torch
import yaml
from torch.utils.data import DataLoader, TensorDataset

from tests.helpers.both_trainers import both, quiet  # noqa: F401  (quiet: a fixture used below)

pytestmark = pytest.mark.usefixtures("quiet")


def fit(L, tmp_path, checkpoint, **flags):
    class ValidatesEpoch(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).sum()

        def validation_step(self, batch, batch_idx):
            self.log("val_loss", float(self.current_epoch))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def train_dataloader(self):
            return DataLoader(TensorDataset(torch.ones(4, 2)), batch_size=2)

        val_dataloader = train_dataloader

    ModelCheckpoint = importlib.import_module(f"{L.__name__}.callbacks").ModelCheckpoint
    callback = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}-{step}", **checkpoint)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=1, num_sanity_val_steps=0,
                        callbacks=[callback], **flags)
    trainer.fit(ValidatesEpoch())
    return callback


@both
@pytest.mark.parametrize(("monitor", "every_n_train_steps", "kept"), [
    ("step", 1, {"epoch=2-step=5.ckpt": 5, "epoch=2-step=6.ckpt": 6}),
    ("epoch", None, {"epoch=1-step=4.ckpt": 1, "epoch=2-step=6.ckpt": 2})])
def test_step_and_epoch_monitors_keep_the_top_k(L, tmp_path, monitor, every_n_train_steps, kept):
    callback = fit(L, tmp_path, dict(monitor=monitor, mode="max", save_top_k=2,
                                     every_n_train_steps=every_n_train_steps), max_epochs=3)
    assert sorted(os.listdir(tmp_path)) == sorted(kept)
    assert os.path.basename(callback.best_model_path) == "epoch=2-step=6.ckpt"
    callback.to_yaml()
    with open(tmp_path / "best_k_models.yaml") as file:
        assert {os.path.basename(path): score for path, score in yaml.safe_load(file).items()} == kept
    callback.to_yaml(tmp_path / "elsewhere.yaml")
    assert (tmp_path / "elsewhere.yaml").read_text() == (tmp_path / "best_k_models.yaml").read_text()


@both
def test_step_trigger_waits_for_a_validation_metric(L, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        callback = fit(L, tmp_path, dict(monitor="val_loss", every_n_train_steps=1), max_epochs=2)
    assert not [w for w in caught if "val_loss" in str(w.message)]
    # Steps 1-2 precede the first validation; step 3 ranks its value (0.0), which epoch 1's 1.0 does not beat.
    assert os.listdir(tmp_path) == ["epoch=1-step=3.ckpt"]
    assert callback.best_model_score == 0.0


def scores(callback):
    return {os.path.basename(path): float(score) for path, score in callback.best_k_models.items()}


@both
def test_time_trigger_ranks_the_validation_that_follows_its_batch(L, tmp_path):
    """Every batch is due (a zero interval); a batch that validation follows is saved after it, with its value:
    step 4 with epoch 1's 1.0, not epoch 0's 0.0."""
    from datetime import timedelta

    callback = fit(L, tmp_path, dict(monitor="val_loss", mode="max", save_top_k=-1, save_on_train_epoch_end=False,
                                     train_time_interval=timedelta(0)), max_epochs=3)
    assert scores(callback) == {"epoch=0-step=2.ckpt": 0.0, "epoch=1-step=3.ckpt": 0.0, "epoch=1-step=4.ckpt": 1.0,
                                "epoch=2-step=5.ckpt": 1.0, "epoch=2-step=6.ckpt": 2.0}


