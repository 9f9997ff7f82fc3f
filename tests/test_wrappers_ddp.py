"""The step methods of a module set up under DDP run through DDP's forward, so their gradients are all-reduced
(as Lightning Fabric redirects them); 2 real gloo processes running tests/wrappers_ddp_worker.py."""
from pathlib import Path

import pytest
import torch

from tests.wrappers_ddp_worker import AVERAGED

WORKER = Path(__file__).with_name("wrappers_ddp_worker.py")


@pytest.fixture(scope="module")
def ranks(run_ranks, tmp_path_factory):
    out = tmp_path_factory.mktemp("steps")
    return run_ranks([WORKER, out], out)[1]


@pytest.mark.parametrize("method", ["training_step", "validation_step", "custom_step"])
def test_step_methods_are_synchronised_by_ddp(ranks, method):
    # Alone, rank 0's batch gives the gradient 1 and rank 1's 2: DDP averages them on both ranks.
    for result in ranks:
        assert torch.equal(result[method], AVERAGED)


def test_an_unmarked_method_that_runs_the_model_is_an_error_naming_mark_forward_method(ranks):
    for result in ranks:
        assert "mark_forward_method('unmarked')" in result["unmarked_error"]


def test_attributes_set_on_the_wrapper_reach_the_users_module(ranks):
    for result in ranks:
        assert result["flag_on_module"] == "set on the wrapper"
        assert result["forward_restored"]
        assert result["device"] == "cpu"
