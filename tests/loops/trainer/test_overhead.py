"""The Trainer's per-step cost over a raw loop, measured with benchmarks/overhead.py's own loops and call counter:
at most 407 extra Python calls per step with progress bar, logger, checkpointing and summary off (0.25× the 1,628
that Lightning's Trainer adds), and the same final weights as the raw loop."""
import torch

import loops as L
from benchmarks.overhead import calls_per_step, raw_loop, trainer_loop

BUDGET = 407
TRAINER = trainer_loop(L.Trainer, L.LightningModule)


def test_extra_calls_per_step_within_budget():
    torch.set_num_threads(1)
    raw_loop(2), TRAINER(2)  # first runs pay one-time costs (lazy imports, caches)
    extra = calls_per_step(TRAINER, 40) - calls_per_step(raw_loop, 40)
    assert extra <= BUDGET, f"Trainer adds {extra:.1f} calls per step (budget {BUDGET})"


def test_same_weights_as_the_raw_loop():
    raw, trained = raw_loop(20), TRAINER(20)
    assert all(torch.equal(a, b) for a, b in zip(raw.parameters(), trained.parameters()))
