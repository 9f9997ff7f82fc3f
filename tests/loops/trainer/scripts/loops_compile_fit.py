"""Run by test_trainer_compile.py as `python loops_compile_fit.py OUT_DIR`: a LightningModule fitted uncompiled and
`torch.compile`d (backend "aot_eager") by the Trainer under DDP, then under FSDP, in the same 2 processes
(Trainer(strategy="ddp") re-runs this script for rank 1; the later Trainers join its processes). Each run saves
OUT_DIR/<strategy>-<plain|compiled>.ckpt with `trainer.save_checkpoint` (FSDP: one full-state file); rank r writes
OUT_DIR/rank<r>.pt with, per strategy and run, how the set-up module is built, whether the steps ran compiled,
the logged metrics and the full weights."""
import sys
from pathlib import Path

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.nn.parallel import DistributedDataParallel

import loops as L
from fabric_kit.strategies import FSDPStrategy
from tests.helpers.loops import loader


class Net(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        self.traced = False  # forward ran under torch.compile's tracing

    def forward(self, x):
        self.traced = self.traced or torch.compiler.is_compiling()
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val", nn.functional.mse_loss(self(x), y), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Structure(L.Callback):
    """How fabric set the steps' module up: the outer module's class, and whether it compiles the strategy's
    wrapper (DDP / FSDP) rather than sitting inside it."""

    def on_train_start(self, trainer, pl_module):
        outer = trainer.run_state.fabric_module._forward_module
        self.outer = type(outer).__name__
        self.around = isinstance(getattr(outer, "_orig_mod", None), (DistributedDataParallel, FSDPModule))


def fit(strategy, compiled, out):
    torch.manual_seed(0)
    model = Net()
    structure = Structure()
    trainer = L.Trainer(accelerator="cpu", devices=2, max_epochs=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[structure],
                        strategy="ddp" if strategy == "ddp" else FSDPStrategy(state_dict_type="full"))
    trainer.fit(torch.compile(model, backend="aot_eager") if compiled else model, loader(n=32, batch_size=4),
                loader(n=8, batch_size=4))
    kind = "compiled" if compiled else "plain"
    trainer.save_checkpoint(out / f"{strategy}-{kind}.ckpt")
    weights = {k: v.detach().cpu() for k, v in trainer.strategy.get_module_state_dict(model).items()}
    return trainer.global_rank, {"outer": structure.outer, "around": structure.around, "traced": model.traced,
                                 "metrics": sorted(trainer.callback_metrics), "weights": weights,
                                 "global_step": trainer.global_step, "module": trainer.lightning_module is model}


def main(out_dir):
    out = Path(out_dir)
    result = {}
    for strategy in ("ddp", "fsdp"):
        for compiled in (False, True):
            rank, result[strategy, compiled] = fit(strategy, compiled, out)
    torch.save(result, out / f"rank{rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1])
