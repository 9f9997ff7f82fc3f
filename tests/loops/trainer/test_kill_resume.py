"""Kill-and-resume for the Trainer: a run killed by SIGKILL mid-epoch and rerun with ckpt_path="last" ends with
weights bit-identical to an uninterrupted run."""
import signal
from pathlib import Path

import pytest
import torch

from loops.callbacks import ModelCheckpoint
from tests.helpers.loops import Regression, loader, make_trainer

SCRIPT = Path(__file__).parent / "scripts" / "loops_kill_resume.py"


@pytest.mark.parametrize("kind", ["torch", "stateful"])
def test_killed_run_resumed_from_last_is_bit_identical(run_ranks, tmp_path, kind):
    if kind == "stateful":  # torchdata's StatefulDataLoader, 2 workers: resumed through its own state
        pytest.importorskip("torchdata.stateful_dataloader")
    killed = run_ranks([SCRIPT, tmp_path, "kill", kind], check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.startswith("last")) == ["last.ckpt"]
    for mode in ("resume", "full"):
        proc = run_ranks([SCRIPT, tmp_path, mode, kind], check=False)
        assert proc.returncode == 0, proc.stderr
    resumed, full = torch.load(tmp_path / "resume.pt"), torch.load(tmp_path / "full.pt")
    assert resumed["global_step"] == full["global_step"] == 24
    assert all(torch.equal(resumed["weights"][k], full["weights"][k]) for k in full["weights"])


def test_last_without_any_checkpoint_warns_and_starts_fresh(tmp_path):
    trainer = make_trainer(max_epochs=1, limit_val_batches=0, callbacks=[ModelCheckpoint(dirpath=tmp_path)])
    with pytest.warns(UserWarning, match=r'ckpt_path="last"\): no last checkpoint exists yet'):
        trainer.fit(Regression(), loader(), ckpt_path="last")
    assert trainer.global_step == 8
