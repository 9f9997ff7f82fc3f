"""Out-of-memory errors handled on every rank together (fabric_kit.out_of_memory, the Trainer's BatchSizeFinder and
on_oom="reduce"). The distributed cases share one launch of tests/out_of_memory_worker.py on 2 gloo processes, where
rank 1 alone runs out of memory above a batch of LIMIT; the single-process cases run here."""
import importlib.util
from pathlib import Path

import pytest
import torch

from fabric_kit import Fabric
from fabric_kit.out_of_memory import OutOfMemoryAgreement, find_executable_batch_size, is_oom_error
from tests.helpers.processes import TORCHRUN_TWO
from tests.out_of_memory_worker import LIMIT

WORKER = Path(__file__).with_name("out_of_memory_worker.py")
needs_deepspeed = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="DeepSpeed is not installed")


@pytest.fixture(scope="module")
def ranks(run_ranks, tmp_path_factory):
    out = tmp_path_factory.mktemp("memory")
    _, results = run_ranks([*TORCHRUN_TWO, WORKER, out], out, timeout=600)
    return results


def _equal(left, right):
    return all(torch.equal(a, b) for a, b in zip(left, right, strict=True))


def test_find_executable_batch_size_agrees_across_ranks_and_trains_as_that_size_from_the_start(ranks):
    for result in ranks:
        fabric = result["fabric"]
        assert fabric["found"] == LIMIT and fabric["tried"] == [8, 4, 2]
        # The failed attempts changed nothing: bit-equal to training at the size found from the start.
        assert _equal(fabric["weights"], fabric["reference"])
        assert "floor, 4" in fabric["floor_error"] and "from 16" in fabric["floor_error"]
        # Without a backward to meet in, the ranks learn of rank 1's failure at the attempt's end.
        assert fabric["no_backward"] == (2, [5, 2])
    assert _equal(ranks[0]["fabric"]["weights"], ranks[1]["fabric"]["weights"])


@pytest.mark.parametrize("strategy", ["fsdp", "fsdp_set_up_inside",
                                      pytest.param("deepspeed_stage_2", marks=needs_deepspeed)])
def test_find_executable_batch_size_agrees_under_fsdp_and_zero_2(ranks, strategy):
    for result in ranks:
        search = result[strategy]
        assert search["found"] == LIMIT and search["tried"] == [8, 4, 2]
        # FSDP: rank 0 met rank 1's failure before a shard group's all-gather; every rank dropped the forward.
        assert _equal(search["weights"], search["reference"])
    assert _equal(ranks[0][strategy]["weights"], ranks[1][strategy]["weights"])


@needs_deepspeed
def test_zero_3_refuses_to_agree_on_out_of_memory_errors():
    fabric = Fabric(accelerator="cpu", devices=1, strategy="deepspeed_stage_3")
    with pytest.raises(RuntimeError, match="ZeRO stage 3.*accepted: ZeRO stages 0 to 2"), OutOfMemoryAgreement(fabric):
        pass
    assert fabric._oom_agreement is None


def test_the_batch_size_finder_settles_on_one_size_and_keeps_the_global_batch(ranks):
    for result in ranks:
        finder, from_start = result["trainer"]["finder"], result["trainer"]["from_start"]
        # power: 8 and 4 fail on rank 1, 2 fits, 4 fails again; every rank tried the same sizes.
        assert (finder["size"], finder["accumulate"], finder["tried"]) == (2, 4, [8, 4, 2, 4])
        assert finder["steps"] == from_start["steps"] == 8
        assert torch.equal(finder["weight"], from_start["weight"]) and torch.equal(finder["bias"], from_start["bias"])
        binsearch = result["trainer"]["binsearch"]
        assert (binsearch["size"], binsearch["tried"]) == (2, [3, 1, 2])
        assert "even the floor, 4" in result["trainer"]["finder_floor_error"]
    assert ranks[0]["trainer"]["finder"]["size"] == ranks[1]["trainer"]["finder"]["size"]


def test_on_oom_reduce_continues_with_smaller_micro_batches_as_a_run_that_used_them_from_the_start(ranks):
    for result in ranks:
        reduce, from_start = result["trainer"]["reduce"], result["trainer"]["from_start"]
        assert (reduce["splits"], reduce["tried"], reduce["steps"]) == (4, [8, 4, 2], 8)
        # Bit-equal: the same micro-batches, weighed by 1/4 as accumulate_grad_batches=4 divides by 4.
        assert torch.equal(reduce["weight"], from_start["weight"]) and torch.equal(reduce["bias"], from_start["bias"])
    assert torch.equal(ranks[0]["trainer"]["reduce"]["weight"], ranks[1]["trainer"]["reduce"]["weight"])


def test_one_process_halves_down_to_the_floor_and_names_it():
    tried = []

    @find_executable_batch_size(starting_batch_size=100, floor=10)
    def run(batch_size, scale):
        tried.append(batch_size)
        if batch_size > 30:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return batch_size * scale

    assert run(2) == 50 and tried == [100, 50, 25]
    tried.clear()

    @find_executable_batch_size(Fabric(accelerator="cpu", devices=1), starting_batch_size=24, floor=5)
    def never(batch_size):
        tried.append(batch_size)
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 GB")

    with pytest.raises(RuntimeError, match=r"down to the floor, 5 \(from 24"):
        never()
    assert tried == [24, 12, 6, 5]


def test_other_errors_propagate_at_once_and_bad_arguments_are_named():
    calls = []

    @find_executable_batch_size(starting_batch_size=8)
    def broken(batch_size):
        calls.append(batch_size)
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        broken()
    assert calls == [8]
    with pytest.raises(ValueError, match="floor=9"):
        find_executable_batch_size(starting_batch_size=8, floor=9)
    with pytest.raises(ValueError, match="starting_batch_size=0"):
        find_executable_batch_size(starting_batch_size=0)


def test_the_agreement_catches_only_memory_errors_and_does_not_nest():
    assert is_oom_error(torch.OutOfMemoryError("out of memory")) and not is_oom_error(ValueError("out of memory"))
    fabric = Fabric(accelerator="cpu", devices=1)
    with OutOfMemoryAgreement(fabric) as attempt:
        raise torch.OutOfMemoryError("out of memory")
    assert attempt.failed and attempt.ran_out_here and fabric._oom_agreement is None
    with OutOfMemoryAgreement(fabric) as attempt:
        pass
    assert not attempt.failed
    with pytest.raises(KeyError), OutOfMemoryAgreement(fabric):
        raise KeyError("not memory")
    with OutOfMemoryAgreement(fabric), pytest.raises(RuntimeError, match="do not nest"), OutOfMemoryAgreement(fabric):
        pass
