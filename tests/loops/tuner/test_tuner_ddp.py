"""The learning-rate finder, EMA and the ThroughputMonitor on 2 real gloo processes: the ranks stop the sweep at the
same step and agree on its results (no rank waits for the other in a collective), the weights stay in sync, and
only rank 0 logs throughput, with global rates."""
from pathlib import Path

import torch

SCRIPT = Path(__file__).parent / "scripts" / "loops_ddp_tuner.py"


def test_lr_find_then_fit_with_ema_and_throughput_on_two_processes(run_ranks, tmp_path):
    _, ranks = run_ranks([SCRIPT, tmp_path], tmp_path, timeout=180)
    assert [r["rank"] for r in ranks] == [0, 1]
    assert ranks[0]["results"] == ranks[1]["results"]
    assert 2 < len(ranks[0]["results"]["lr"]) < 60  # diverged before max_lr, on both ranks at once
    assert ranks[0]["lr"] == ranks[1]["lr"] == ranks[0]["suggestion"]
    assert all(r["step_after_tuning"] == 0 and r["global_step"] == 4 for r in ranks)
    assert torch.equal(ranks[0]["weight"], ranks[1]["weight"])
    assert {"train/samples_per_sec", "train/device/samples_per_sec", "train/batches_per_sec"} <= set(ranks[0]["logged"])
    # The throughput is rank 0's alone; self.log's values reach every rank's loggers, as in Lightning.
    assert ranks[1]["logged"] == ["epoch", "train_loss"]
