"""Run by test_trainer_ddp.py as `python loops_fsdp_fit.py OUT_DIR`: the Trainer under FSDP on 2 processes (the
strategy re-runs this script for rank 1); configure_optimizers then runs on the sharded parameters. A run saved
after 1 epoch and resumed to 2 must end where an uninterrupted 2-epoch run does (momentum state included); it is
also saved as one full-state file (fsdp_full.ckpt). A checkpoint written by one process (single.ckpt) is refused."""
import sys
from pathlib import Path

import torch

import loops as L
from tests.helpers.loops import MomentumRegression, loader


def fit(out_dir: Path, epochs: int, ckpt_path=None):
    torch.manual_seed(0)
    model = MomentumRegression()
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="fsdp", max_epochs=epochs, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, num_sanity_val_steps=0)
    trainer.fit(model, loader(n=32, batch_size=4), loader(n=8, batch_size=4), ckpt_path=ckpt_path)
    return trainer, model


def full_weights(model):
    return {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in model.state_dict().items()}


def main(out_dir: str) -> None:
    out = Path(out_dir)
    trainer, _ = fit(out, 1)
    trainer.save_checkpoint(out / "fsdp.ckpt")
    trainer.fabric.strategy.state_dict_type = "full"  # and as one file, which test_trainer_ddp resumes on one process
    trainer.save_checkpoint(out / "fsdp_full.ckpt")
    resumed, resumed_model = fit(out, 2, ckpt_path=out / "fsdp.ckpt")
    reference, reference_model = fit(out, 2)
    try:  # written by one process (the test): the optimizer states are one list, which FSDP cannot shard
        fit(out, 2, ckpt_path=out / "single.ckpt")
        refused = ""
    except KeyError as error:
        refused = str(error)
    torch.save({"global_step": resumed.global_step,
                "metrics": {k: v.item() for k, v in resumed.callback_metrics.items()},
                "resumed": full_weights(resumed_model), "reference": full_weights(reference_model),
                "refused": refused},
               out / f"rank{resumed.global_rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1])
