"""A SLURM job for tests that no scheduler runs: the variables `srun --ntasks 2` sets, and a stub `scontrol` first on
PATH that records each call instead of requeueing anything."""
import os
from pathlib import Path

JOB_ID = "4242"


def fake_slurm_job(directory: Path, environment: dict[str, str]) -> tuple[dict[str, str], Path]:
    """`environment` as a task of a 2-task SLURM job on this node sees it (add SLURM_PROCID / SLURM_LOCALID per
    task), and the file where the stub `scontrol` writes its arguments, one call per line."""
    bin_dir = directory / "bin"
    bin_dir.mkdir()
    calls = directory / "scontrol_calls"
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    scontrol.chmod(0o755)
    return {**environment, "SLURM_NTASKS": "2", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost",
            "SLURM_JOB_ID": JOB_ID, "SLURM_JOB_NAME": "train", "SLURM_NTASKS_PER_NODE": "2",
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}, calls
