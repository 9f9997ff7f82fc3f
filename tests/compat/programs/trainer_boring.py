# A Trainer fit of the demo BoringModel: steps, metrics and final weights printed.
import lightning as L
import torch
from lightning.pytorch.demos import BoringModel


class Recorded(BoringModel):
    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        self.log("train_loss", out["loss"])
        print(f"@@ loss {out['loss'].item():.8f}")
        return out


L.seed_everything(7)
model = Recorded()
trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=2, limit_train_batches=4, limit_val_batches=2,
                    num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False)
trainer.fit(model)
print("@@ global_step", trainer.global_step, "epoch", trainer.current_epoch)
print("@@ lr", model.optimizers().param_groups[0]["lr"])
weights = torch.cat([p.detach().flatten() for p in model.parameters()])
print("@@ weights", " ".join(f"{v:.8f}" for v in weights.tolist()))
