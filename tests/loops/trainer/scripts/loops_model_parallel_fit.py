"""Run by test_trainer_model_parallel.py as `python loops_model_parallel_fit.py OUT_DIR`: the Trainer on 2
processes under ModelParallelStrategy (TP = 2), the LightningModule parallelizing itself in configure_model with
`self.device_mesh`; then under FSDP. configure_model runs on the meta device under both, so no rank builds the whole
model. A TP run saved after 1 epoch (a sharded directory) and resumed to 2 must end where an uninterrupted 2-epoch
run does."""
import sys
from pathlib import Path

import torch

import loops as L
from fabric_kit.strategies import ModelParallelStrategy
from tests.strategies.model_parallel_model import GLOBAL_BATCH, Transformer, dataset, full_weights, loss_of, parallelize


class ParallelTransformer(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.model = None
        self.created_on_meta = None

    def configure_model(self):
        if self.model is not None:  # called again by each stage
            return
        self.model = Transformer()
        self.created_on_meta = self.model.embed.weight.is_meta
        if self.device_mesh is not None:
            parallelize(self.model, self.device_mesh)

    def training_step(self, batch, batch_idx):
        loss = loss_of(self.model, batch[0])
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


def fit(strategy, epochs, ckpt_path=None):
    torch.manual_seed(0)
    module = ParallelTransformer()
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_epochs=epochs, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    loader = torch.utils.data.DataLoader(dataset(), batch_size=GLOBAL_BATCH)  # dp = 1: every rank the whole batch
    trainer.fit(module, loader, ckpt_path=ckpt_path)
    return trainer, module


def main(out_dir):
    out = Path(out_dir)
    first, module = fit(ModelParallelStrategy(tensor_parallel_size=2), 1)
    first.save_checkpoint(out / "tp2.ckpt")
    resumed, resumed_module = fit(ModelParallelStrategy(tensor_parallel_size=2), 2, ckpt_path=out / "tp2.ckpt")
    reference, reference_module = fit(ModelParallelStrategy(tensor_parallel_size=2), 2)
    _, fsdp_module = fit("fsdp", 1)
    torch.save({"mesh": tuple(first.fabric.strategy.device_mesh.shape), "meta": module.created_on_meta,
                "fsdp_meta": fsdp_module.created_on_meta, "global_step": resumed.global_step,
                "sharded_checkpoint": (out / "tp2.ckpt").is_dir(),
                "wq_shape": tuple(module.model.blocks[0].attention.wq.weight.to_local().shape),
                "resumed": full_weights(resumed_module.model), "reference": full_weights(reference_module.model)},
               out / f"rank{first.global_rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1])
