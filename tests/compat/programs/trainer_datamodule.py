# A Trainer fit and test with the demo datamodule, a CSV logger and a checkpoint callback named by Hydra-style module
# paths, monitoring a validation metric: metrics, the best score and the final weights printed.
import os
import tempfile

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks.model_checkpoint import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringDataModule, BoringModel
from lightning.pytorch.loggers.csv_logs import CSVLogger


class Logged(BoringModel):
    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        self.log("train_loss", out["loss"], on_step=False, on_epoch=True)
        return out

    def validation_step(self, batch, batch_idx):
        out = super().validation_step(batch, batch_idx)
        self.log("val_loss", out["x"])
        return out

    def test_step(self, batch, batch_idx):
        out = super().test_step(batch, batch_idx)
        self.log("test_loss", out["y"])
        return out


pl.seed_everything(3)
with tempfile.TemporaryDirectory() as root:
    data, model = BoringDataModule(), Logged()
    checkpoint = ModelCheckpoint(dirpath=os.path.join(root, "checkpoints"), monitor="val_loss", save_top_k=1)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=3, limit_train_batches=5, limit_val_batches=3,
                         limit_test_batches=4, num_sanity_val_steps=0, logger=CSVLogger(root), callbacks=[checkpoint],
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=root)
    trainer.fit(model, datamodule=data)
    for name, value in sorted(trainer.callback_metrics.items()):
        print(f"@@ fit {name} {value.item():.8f}")
    print(f"@@ best {checkpoint.best_model_score.item():.8f} {os.path.basename(checkpoint.best_model_path)}")
    (result,) = trainer.test(model, datamodule=data, verbose=False)
    for name, value in sorted(result.items()):
        print(f"@@ test {name} {value:.8f}")
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    print("@@ weights", " ".join(f"{v:.8f}" for v in weights.tolist()))
