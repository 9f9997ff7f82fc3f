"""Manual optimization under DDP with two `manual_backward` calls per step (Lightning's GAN pattern), on 2 real
gloo processes: every backward's gradients are averaged over the ranks, so both ranks end with the weights one
process reaches on the two ranks' batches together."""
import importlib.util
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parent / "scripts" / "loops_ddp_manual_gan.py"


def single_process_weights(toggle):
    spec = importlib.util.spec_from_file_location("loops_ddp_manual_gan", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return {name: p.detach() for name, p in script.train(1, "auto", toggle).named_parameters()}


RUNS = [("ddp", True), ("ddp", False), ("ddp_find_unused_parameters_true", True)]


@pytest.fixture(scope="module")
def trained(run_ranks, tmp_path_factory):
    """Every rank's weights after each of RUNS, all trained one after the other by one launch of the script."""
    out = tmp_path_factory.mktemp("manual_gan")
    return run_ranks([SCRIPT, out, *(f"{strategy}:{int(toggle)}" for strategy, toggle in RUNS)], out, timeout=300)[1]


@pytest.mark.parametrize(("strategy", "toggle"), RUNS)
def test_two_backward_calls_per_step_are_both_synchronised(trained, clean_env, strategy, toggle):
    expected = single_process_weights(toggle)
    for rank in trained:
        weights = rank[f"{strategy}:{int(toggle)}"]
        assert set(weights) == set(expected)
        for name, value in expected.items():
            torch.testing.assert_close(weights[name], value, rtol=0, atol=1e-5, msg=name)
