"""Run by test_loops_ddp.py as `python loops_fsdp_fit.py OUT_DIR`: the Trainer under FSDP on 2 processes (the
strategy re-runs this script for rank 1); configure_optimizers then runs on the sharded parameters."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import loops as L  # noqa: E402
from loops_helpers import Regression, loader  # noqa: E402


def main(out_dir: str) -> None:
    torch.manual_seed(0)
    model = Regression(lr=0.1)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="fsdp", max_epochs=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, num_sanity_val_steps=0)
    trainer.fit(model, loader(n=32, batch_size=4), loader(n=8, batch_size=4))
    torch.save({"global_step": trainer.global_step, "metrics": {k: v.item() for k, v in
                                                                trainer.callback_metrics.items()}},
               Path(out_dir) / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1])
