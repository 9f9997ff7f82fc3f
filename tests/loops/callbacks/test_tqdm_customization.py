"""A TQDMProgressBar subclass using Lightning's documented customization points (`init_*_tqdm`, the
`*_progress_bar` properties, `get_metrics`) draws the same on loops as on Lightning 2.6. In process, on a stdout
that says it is a terminal (what makes loops draw tqdm bars rather than lines)."""
import io
import sys

import pytest
import torch
from torch.utils.data import DataLoader

import loops
from tests.helpers.both_trainers import pl, quiet  # noqa: F401


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def build(L):
    class Custom(L.callbacks.TQDMProgressBar):
        def __init__(self):
            super().__init__()
            self.seen = []

        def init_validation_tqdm(self):
            bar = super().init_validation_tqdm()
            bar.disable = True  # the recipe for hiding the validation bar
            return bar

        def init_predict_tqdm(self):
            bar = super().init_predict_tqdm()
            bar.disable = True
            return bar

        def get_metrics(self, trainer, pl_module):
            metrics = super().get_metrics(trainer, pl_module)
            metrics.pop("v_num", None)
            return {**metrics, "custom": 7}

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            bar = self.train_progress_bar
            self.seen.append(("train", bar.n, bar.total, bar.disable))

        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            super().on_validation_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
            self.seen.append(("val", trainer.sanity_checking, self.val_progress_bar.disable))

        def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            super().on_test_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
            self.seen.append(("test", self.test_progress_bar.n, self.test_progress_bar.total))

        def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            super().on_predict_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
            self.seen.append(("predict", self.predict_progress_bar.disable))

    class Model(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(1, 1)

        def training_step(self, batch, batch_idx):
            loss = self.layer(batch).pow(2).mean()
            self.log("train_loss", loss, prog_bar=True)
            return loss

        def validation_step(self, batch, batch_idx):
            self.log("val_loss", self.layer(batch).mean(), prog_bar=True)

        def test_step(self, batch, batch_idx):
            pass

        def predict_step(self, batch, batch_idx):
            return batch

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return Custom(), Model()


def run(L, monkeypatch, root):
    bar, model = build(L)
    with pytest.raises(TypeError):
        bar.train_progress_bar  # noqa: B018 -- no bar before one is drawn
    screen = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", screen)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=2, limit_val_batches=2, logger=True,
                        default_root_dir=str(root / L.__name__), enable_checkpointing=False,
                        enable_model_summary=False, callbacks=[bar])
    data = DataLoader(torch.ones(6, 1), batch_size=2)
    trainer.fit(model, data, data)
    trainer.test(model, data, verbose=False)
    trainer.predict(model, data)
    monkeypatch.undo()
    out = screen.getvalue()
    frames = [frame for frame in out.replace("\n", "\r").split("\r") if frame.strip()]
    return bar.seen, {
        "epoch frames end with the custom metrics": frames and any(
            f.startswith("Epoch 1: 100%") and "custom=7" in f and "val_loss=" in f for f in frames),
        "no version shown": "v_num" not in out,
        "sanity bar shown": any(f.startswith("Sanity Checking") for f in frames),
        "test bar shown": any(f.startswith("Testing") for f in frames)}


def test_a_customized_bar_draws_as_on_lightning(quiet, monkeypatch, tmp_path):  # noqa: F811
    ours, theirs = run(loops, monkeypatch, tmp_path), run(pl, monkeypatch, tmp_path)
    assert all(theirs[1].values()), theirs[1]  # the checks hold on Lightning
    assert ours == theirs
