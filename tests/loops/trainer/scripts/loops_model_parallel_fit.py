"""Run by test_trainer_model_parallel.py as `python loops_model_parallel_fit.py OUT_DIR`: the Trainer on 2
processes under ModelParallelStrategy (TP = 2), the LightningModule parallelizing itself in configure_model with
`self.device_mesh`; then the same under FSDP. configure_model runs on the meta device under both, so no rank builds
the whole model. Under each strategy, ModelCheckpoint(save_last=True) writes sharded directories during a 1-epoch
fit; a second fit to 2 epochs resumes with ckpt_path="last" and must end where an uninterrupted 2-epoch fit does;
`ParallelTransformer.load_from_checkpoint` of its last checkpoint gives a plain model with those weights."""
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


def fit(strategy, epochs, checkpoints=None, ckpt_path=None):
    """A fit from the same initial weights; with `checkpoints`, ModelCheckpoint(save_last=True) writes there."""
    torch.manual_seed(0)
    module = ParallelTransformer()
    callbacks = [L.callbacks.ModelCheckpoint(dirpath=checkpoints, save_last=True)] if checkpoints else []
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy=strategy(), max_epochs=epochs, logger=False,
                        enable_checkpointing=bool(checkpoints), callbacks=callbacks, enable_progress_bar=False,
                        enable_model_summary=False)
    loader = torch.utils.data.DataLoader(dataset(), batch_size=GLOBAL_BATCH)
    trainer.fit(module, loader, ckpt_path=ckpt_path)
    return trainer, module


def checkpointed_and_resumed(strategy, checkpoints):
    """What the test checks of one strategy: a fit to 1 epoch, its resume to 2 with ckpt_path="last", an
    uninterrupted 2-epoch fit, and the last checkpoint loaded without a Trainer."""
    first, module = fit(strategy, 1, checkpoints)
    saved = sorted(path.name for path in checkpoints.iterdir())
    resumed, resumed_module = fit(strategy, 2, checkpoints, ckpt_path="last")
    _, reference_module = fit(strategy, 2)
    loaded = ParallelTransformer.load_from_checkpoint(checkpoints / "last.ckpt")
    return first, module, {
        "meta": module.created_on_meta, "saved": saved, "sharded": (checkpoints / "last.ckpt").is_dir(),
        "resumed_from": resumed.ckpt_path, "global_step": resumed.global_step,
        "resumed": full_weights(resumed_module.model), "reference": full_weights(reference_module.model),
        "loaded": {name: p.detach() for name, p in loaded.model.named_parameters()}, "loaded_training": loaded.training}


def main(out_dir):
    out = Path(out_dir)
    first, module, tp = checkpointed_and_resumed(lambda: ModelParallelStrategy(tensor_parallel_size=2), out / "tp")
    _, _, fsdp = checkpointed_and_resumed(lambda: "fsdp", out / "fsdp")
    torch.save({"mesh": tuple(first.fabric.strategy.device_mesh.shape), "tp": tp, "fsdp": fsdp,
                "wq_shape": tuple(module.model.blocks[0].attention.wq.weight.to_local().shape)},
               out / f"rank{first.global_rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1])
