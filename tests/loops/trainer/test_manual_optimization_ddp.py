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


@pytest.mark.parametrize(("strategy", "toggle"), [("ddp", True), ("ddp", False),
                                                  ("ddp_find_unused_parameters_true", True)])
def test_two_backward_calls_per_step_are_both_synchronised(run_ranks, tmp_path, clean_env, strategy, toggle):
    _, ranks = run_ranks([SCRIPT, tmp_path, strategy, int(toggle)], tmp_path, timeout=180)
    expected = single_process_weights(toggle)
    for weights in ranks:
        assert set(weights) == set(expected)
        for name, value in expected.items():
            torch.testing.assert_close(weights[name], value, rtol=0, atol=1e-5, msg=name)
