"""The benchmarks that no other test runs still run: ddp_scaling on 1 and 2 processes (ours and raw torchrun + DDP,
one step each), and gpu_step's model and its skip on machines without CUDA. No timing is asserted."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_step

ROOT = Path(gpu_step.__file__).resolve().parents[1]


def test_ddp_scaling_runs_every_case(clean_env):
    proc = subprocess.run([sys.executable, "benchmarks/ddp_scaling.py", "--steps", "1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = re.findall(r"^\| (raw DDP \(torchrun\)|fabric_kit \(fabric run\)) \| ([12]) \| (\d+) \|", proc.stdout,
                      re.MULTILINE)
    assert sorted((name, processes) for name, processes, _ in rows) == [
        ("fabric_kit (fabric run)", "1"), ("fabric_kit (fabric run)", "2"),
        ("raw DDP (torchrun)", "1"), ("raw DDP (torchrun)", "2")]
    assert all(int(rate) > 0 for _, _, rate in rows)


def test_gpu_step_model_is_gpt2_small_sized():
    with torch.device("meta"):
        model = gpu_step.GPT()
        logits = model(torch.zeros(2, 16, dtype=torch.long))
    assert 100e6 < sum(p.numel() for p in model.parameters()) < 130e6
    assert logits.shape == (2, 16, gpu_step.VOCAB)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the skip path is for machines without CUDA")
def test_gpu_step_skips_cleanly_without_cuda():
    proc = subprocess.run([sys.executable, "benchmarks/gpu_step.py"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0 and "skipped, CUDA is not available" in proc.stdout
