"""Run by test_profilers.py as `python ddp_profilers.py OUT_DIR`: on 2 gloo processes (Trainer(strategy="ddp")
re-runs this script for rank 1), one short fit (3 training and 2 validation batches) under each profiler in turn,
each writing to its own log dir OUT_DIR/<name>; then `profiler="simple"` without a filename (its report is
printed), and `fabric.profile()` around a raw loop on the same processes. Each rank saves what it saw to
OUT_DIR/rank{r}.pt."""
import sys
from pathlib import Path

import torch

import loops as L
from loops.callbacks import Callback
from loops.demos import BoringModel
from loops.profilers import AdvancedProfiler, PyTorchProfiler, SimpleProfiler


class Counter(Callback):
    def __init__(self):
        self.batches = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batches += 1


def fit(root: Path, profiler) -> L.Trainer:
    torch.manual_seed(0)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, limit_train_batches=3,
                        limit_val_batches=2, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
                        callbacks=[Counter()], profiler=profiler)
    trainer.fit(BoringModel())
    return trainer


def main(out_dir: str) -> None:
    out = Path(out_dir)
    fit(out / "simple", SimpleProfiler(filename="perf"))
    fit(out / "advanced", AdvancedProfiler(filename="perf", line_count_restriction=20))
    fit(out / "pytorch", PyTorchProfiler(filename="perf", table_kwargs={"max_name_column_width": 120}))
    trainer = fit(out / "printed", "simple")
    fabric = trainer.fabric
    model = torch.nn.Linear(4, 1)
    with fabric.profile(out / "raw") as prof:
        for _ in range(3):
            loss = model(torch.randn(8, 4)).pow(2).mean()
            loss.backward()
            fabric.all_reduce(loss.detach())
            prof.step()
    torch.save({"rank": fabric.global_rank}, out / f"rank{fabric.global_rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1])
