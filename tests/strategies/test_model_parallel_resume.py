"""Acceptance: a run under FSDP2 x TP = 2 x 2 (4 real processes, gloo) SIGKILLed mid-epoch after a sharded
checkpoint resumes from it under the same layout and under TP = 2 on 2 processes, and one under pipeline 2 x FSDP2 2
resumes under that layout; each ends at the global sample of a run that never stopped (one process, in this
process) with its weights."""
import shutil

import pytest
import torch

from fabric_kit import Fabric
from tests.helpers.checkpoint_runs import run_training
from tests.helpers.processes import ROOT, as_one_process
from tests.strategies import model_parallel_resume_worker as worker

SCRIPT = ROOT / "tests" / "strategies" / "model_parallel_resume_worker.py"
KILL_AT = 12  # the second epoch's 4th step, 2 steps after the step-10 checkpoint


def killed(layout, checkpoints):
    """The run under `layout` SIGKILLed at KILL_AT, 2 steps after its step-10 checkpoint."""
    launch(layout, checkpoints, checkpoints.parent / f"killed_{layout}.pt", KILL_AT, expect=-9)
    assert sorted(path.name for path in checkpoints.iterdir()) == ["step-00005.ckpt", "step-00010.ckpt"]


def assert_resumed_like(uninterrupted, path, layout):
    resumed = torch.load(path)
    assert resumed["resumed_from"] == 10, layout
    assert (resumed["epoch"], resumed["samples"]) == (uninterrupted["epoch"], uninterrupted["samples"]), layout
    for name, weight in uninterrupted["weights"].items():  # float32 sums in another order over 14 AdamW steps
        torch.testing.assert_close(resumed["weights"][name], weight, atol=2e-5, rtol=0, msg=f"{layout}: {name}")


def launch(layout, checkpoints, out, *kill_at, expect=0):
    proc = run_training({}, script=SCRIPT, args=(layout, str(checkpoints), str(out), *map(str, kill_at)),
                        timeout=300)
    assert proc.returncode == expect, f"exit status {proc.returncode}, expected {expect}\n{proc.stdout}"


@pytest.fixture(scope="module")
def uninterrupted():
    with as_one_process():
        fabric = Fabric(accelerator="cpu", devices=1)
        fabric.launch()
        return worker.run(fabric)


def test_killed_under_2x2_resumes_under_2x2_and_under_tp2_at_the_same_sample(tmp_path, uninterrupted):
    checkpoints = tmp_path / "checkpoints"
    killed("dp2tp2", checkpoints)
    shutil.copytree(checkpoints, tmp_path / "for_tp2")  # as the kill left them: the 2 x 2 resume saves more
    launch("dp2tp2", checkpoints, tmp_path / "dp2tp2.pt", KILL_AT)
    launch("tp2", tmp_path / "for_tp2", tmp_path / "tp2.pt", KILL_AT)
    assert uninterrupted["resumed_from"] == 0 and uninterrupted["epoch"] == 1
    for layout in ("dp2tp2", "tp2"):
        assert_resumed_like(uninterrupted, tmp_path / f"{layout}.pt", layout)


def test_killed_under_pipeline_2_x_fsdp2_2_resumes_there_at_the_same_sample(tmp_path, uninterrupted):
    checkpoints = tmp_path / "checkpoints"
    killed("pp2dp2", checkpoints)
    launch("pp2dp2", checkpoints, tmp_path / "pp2dp2.pt", KILL_AT)
    assert_resumed_like(uninterrupted, tmp_path / "pp2dp2.pt", "pp2dp2")
