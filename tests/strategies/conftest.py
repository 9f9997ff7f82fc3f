"""What test_model_parallel.py and test_pipeline_parallel.py share: the launches of their multi-process layouts.
Start-up dominates their cost, so both files' 4-process layouts run in one set of processes."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import outside_launchers
from tests.helpers.processes import ROOT

HERE = Path(__file__).parent


def run_processes(args, processes, out, timeout=300):
    """Run `python *args` outside any launcher; [what each of its `processes` ranks saved to out/rank<r>.pt]."""
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=outside_launchers(), capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"exit status {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return [torch.load(Path(out) / f"rank{rank}.pt") for rank in range(processes)]


@pytest.fixture(scope="session")
def model_parallel_processes(tmp_path_factory):
    """{"tp2": [each of 2 ranks' results], "four": [each of 4 ranks' results], "tp2_out": its folder, "four_out":
    its folder}: model_parallel_worker.py's TP = 2 on 2 processes first (it writes the checkpoints that the other
    layouts read), then pipeline_parallel_worker.py on 4, which runs both pipeline layouts and
    model_parallel_worker's FSDP2 x TP = 2 x 2 in the same processes."""
    tp2, four = tmp_path_factory.mktemp("model_parallel_tp2"), tmp_path_factory.mktemp("model_parallel_four")
    return {"tp2": run_processes([HERE / "model_parallel_worker.py", tp2], 2, tp2),
            "four": run_processes([HERE / "pipeline_parallel_worker.py", four, tp2], 4, four, timeout=900),
            "tp2_out": tp2, "four_out": four}
