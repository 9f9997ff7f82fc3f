"""The Trainer under ModelParallelStrategy and FSDP with 2 real CPU processes on gloo: configure_model builds the
model on the meta device and parallelizes it with `self.device_mesh`; ModelCheckpoint writes sharded directories,
`fit(ckpt_path="last")` resumes exactly from them, and `load_from_checkpoint` reads them into a plain module."""
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("scripts") / "loops_model_parallel_fit.py"


@pytest.fixture(scope="module")
def ranks(run_ranks, tmp_path_factory):
    out = tmp_path_factory.mktemp("trainer_model_parallel")
    return run_ranks([SCRIPT, out], out, timeout=400)[1]


def test_configure_model_parallelizes_on_the_meta_device(ranks):
    for rank in ranks:
        assert rank["mesh"] == (1, 2)
        assert rank["tp"]["meta"] is True and rank["fsdp"]["meta"] is True  # no rank built the whole model
        assert rank["wq_shape"] == (8, 16)  # half of the (16, 16) weight on each tensor-parallel rank


@pytest.mark.parametrize("strategy", ["tp", "fsdp"])
def test_model_checkpoint_writes_shards_that_resume_with_last_and_load_without_a_trainer(ranks, strategy):
    steps_per_epoch = 8 if strategy == "tp" else 4  # FSDP: 2 data-parallel ranks split the 8 batches
    for rank in ranks:
        run = rank[strategy]
        assert run["saved"] == [f"epoch=0-step={steps_per_epoch}.ckpt", "last.ckpt"] and run["sharded"]
        assert run["resumed_from"].endswith("last.ckpt") and run["global_step"] == 2 * steps_per_epoch
        assert run["loaded_training"] is False
        for name, weight in run["reference"].items():
            torch.testing.assert_close(run["resumed"][name], weight, atol=1e-6, rtol=0, msg=name)
            torch.testing.assert_close(run["loaded"][name], run["resumed"][name], atol=0, rtol=0, msg=name)
    for name, weight in ranks[0]["tp"]["reference"].items():
        torch.testing.assert_close(ranks[1]["tp"]["reference"][name], weight, atol=0, rtol=0, msg=name)
