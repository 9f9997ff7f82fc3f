"""Run by test_trainer_ddp.py as `python loops_ddp_fit.py OUT_DIR ACCUMULATE ...`: Trainer(strategy="ddp", devices=2)
re-runs this script for rank 1, exactly as a user's script would be. A run per ACCUMULATE (accumulate_grad_batches),
one after the other in the same 2 processes, each in OUT_DIR/accumulate-<ACCUMULATE>; each rank saves what it saw in
every run, by ACCUMULATE, to OUT_DIR/rank{r}.pt."""
import sys
from pathlib import Path

import torch

import loops as L
from loops.callbacks import ModelCheckpoint
from tests.helpers.loops import Regression, loader


class Synced(Regression):
    def training_step(self, batch, batch_idx):
        self.log("rank_mean", float(self.global_rank), on_step=False, on_epoch=True, sync_dist=True)
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        self.log("val_count", float(batch[0].shape[0]), reduce_fx="sum", sync_dist=True)


def run(out_dir: Path, accumulate: int) -> dict:
    torch.manual_seed(0)
    model = Synced(lr=0.1)
    checkpoint = ModelCheckpoint(dirpath=out_dir / "checkpoints", save_last=True)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, logger=False,
                        callbacks=[checkpoint], enable_progress_bar=False, num_sanity_val_steps=0,
                        accumulate_grad_batches=accumulate)
    trainer.fit(model, loader(n=32, batch_size=4), loader(n=10, batch_size=4))
    metrics = dict(trainer.callback_metrics)
    validated = trainer.validate(model, loader(n=10, batch_size=4), verbose=False)
    gathered = trainer.strategy.all_gather(torch.tensor([trainer.global_rank]))
    # resume from the last checkpoint for one more epoch on both ranks
    resumed = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=3, logger=False,
                        callbacks=[ModelCheckpoint(dirpath=out_dir / "resumed")], enable_progress_bar=False,
                        num_sanity_val_steps=0, accumulate_grad_batches=accumulate)
    resumed_model = Synced(lr=0.1)
    resumed.fit(resumed_model, loader(n=32, batch_size=4), loader(n=10, batch_size=4),
                ckpt_path=checkpoint.last_model_path)
    return {"rank": trainer.global_rank, "world_size": trainer.world_size, "global_step": trainer.global_step,
            "weight": model.layer.weight.detach().clone(), "metrics": metrics,
            "validated": validated, "gathered": gathered.flatten().tolist(),
            "best": checkpoint.best_model_path, "resumed_step": resumed.global_step,
            "resumed_weight": resumed_model.layer.weight.detach().clone()}


if __name__ == "__main__":
    out = Path(sys.argv[1])
    seen = {accumulate: run(out / f"accumulate-{accumulate}", accumulate) for accumulate in map(int, sys.argv[2:])}
    torch.save(seen, out / f"rank{next(iter(seen.values()))['rank']}.pt")
