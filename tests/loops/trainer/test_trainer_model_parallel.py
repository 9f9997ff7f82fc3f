"""The Trainer under ModelParallelStrategy and FSDP with 2 real CPU processes on gloo: configure_model builds the
model on the meta device and parallelizes it with `self.device_mesh`; a sharded checkpoint resumes exactly."""
from pathlib import Path

import torch

SCRIPT = Path(__file__).with_name("scripts") / "loops_model_parallel_fit.py"


def test_configure_model_parallelizes_on_the_meta_device_and_resumes(run_ranks, tmp_path):
    _, ranks = run_ranks([SCRIPT, tmp_path], tmp_path, timeout=400)
    for rank in ranks:
        assert rank["mesh"] == (1, 2)
        assert rank["meta"] is True and rank["fsdp_meta"] is True  # no rank built the whole model
        assert rank["wq_shape"] == (8, 16)  # half of the (16, 16) weight on each tensor-parallel rank
        assert rank["sharded_checkpoint"] and rank["global_step"] == 16
        for name, weight in rank["reference"].items():
            torch.testing.assert_close(rank["resumed"][name], weight, atol=1e-6, rtol=0, msg=name)
    for name, weight in ranks[0]["reference"].items():
        torch.testing.assert_close(ranks[1]["reference"][name], weight, atol=0, rtol=0, msg=name)
