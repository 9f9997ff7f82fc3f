"""Every DDP-family strategy and every collective, with 2 real CPU processes on gloo.

Each test runs tests/strategies/ddp_worker.py (a plain user script) in a subprocess; the ranks save what they
observed and the tests assert on it. The collectives scenario, then the dataloader workers' seeds, runs once per
launcher (the script re-run by `ddp`, and torchrun) and is shared by the tests that read it.
"""
import textwrap
from pathlib import Path

import pytest
import torch

from tests.helpers.processes import TORCHRUN_TWO

WORKER = Path(__file__).with_name("ddp_worker.py")


@pytest.fixture(scope="module", params=["ddp", "torchrun"])
def collectives(request, run_ranks, tmp_path_factory):
    """The collectives scenario, then the worker_seeds one, with `strategy="ddp"`: `python ddp_worker.py` (rank 0
    re-runs the script for rank 1), and the same script unchanged under `torchrun --nproc_per_node 2`."""
    out = tmp_path_factory.mktemp(request.param)
    script = [WORKER, "collectives,worker_seeds", "ddp", out]
    if request.param == "torchrun":
        script = [*TORCHRUN_TWO, *script]
    proc, ranks = run_ranks(script, out)
    return request.param, proc, ranks, out


def test_ranks_and_world(collectives):
    launcher, _, ranks, _ = collectives
    assert [r["rank"] for r in ranks] == [0, 1]
    assert [r["local_rank"] for r in ranks] == [0, 1]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert [r["is_global_zero"] for r in ranks] == [True, False]
    assert [r["device"] for r in ranks] == ["cpu", "cpu"]
    assert ranks[0]["pid"] != ranks[1]["pid"]
    expected_environment = "TorchElasticEnvironment" if launcher == "torchrun" else "LocalEnvironment"
    assert {r["environment"] for r in ranks} == {expected_environment}


def test_launch_is_idempotent(collectives):
    launcher, _, ranks, out = collectives
    assert [r["second_launch_returned"] for r in ranks] == [None, None]
    if launcher == "ddp":
        # Rank 0 started exactly one child although launch() ran twice; the child has no launcher.
        assert [r["children"] for r in ranks] == [1, None]
    else:
        assert [r["children"] for r in ranks] == [None, None]  # torchrun started the ranks: no launcher
    assert sorted(p.read_text() for p in out.glob("returned_pid*.txt")) == ["rank 0 done, tensor intact: True",
                                                                         "rank 1 done, tensor intact: True"]


@pytest.mark.parametrize(("op", "expected"), [("mean", [1.5, 15.0]), ("sum", [3.0, 30.0]), ("max", [2.0, 20.0]),
                                              ("min", [1.0, 10.0])])
def test_all_reduce(collectives, op, expected):
    _, _, ranks, _ = collectives
    for rank, result in enumerate(ranks):
        assert torch.equal(result[f"all_reduce_{op}"], torch.tensor(expected))
        # The caller's tensor is left as it was.
        assert torch.equal(result["all_reduce_input_untouched"], torch.tensor([rank + 1.0, 10.0 * (rank + 1)]))


def test_all_reduce_collections_and_numbers(collectives):
    _, _, ranks, _ = collectives
    for result in ranks:
        nested = result["all_reduce_nested"]
        assert set(nested) == {"a", "b", "c"}
        assert torch.equal(nested["a"], torch.tensor([3.0, 30.0]))
        assert torch.equal(nested["b"][0], torch.tensor(2.0))
        assert isinstance(nested["b"][1], tuple) and torch.equal(nested["b"][1][0], torch.tensor(1))
        assert torch.is_tensor(nested["c"]) and nested["c"].item() == 3.0  # a number inside a collection
        assert torch.equal(result["all_reduce_float"], torch.tensor(3.0))
        assert torch.equal(result["all_reduce_int_mean"], torch.tensor(0.5))


def test_all_gather(collectives):
    _, _, ranks, _ = collectives
    for result in ranks:
        assert torch.equal(result["all_gather"], torch.stack([torch.zeros(2, 3), torch.ones(2, 3)]))
        nested = result["all_gather_nested"]
        assert torch.equal(nested["x"], torch.tensor([[0], [1]]))
        assert torch.equal(nested["y"][0], torch.tensor([0.0, 1.5]))
        assert torch.equal(result["all_gather_number"], torch.tensor([7, 8]))


def test_broadcast_python_objects(collectives):
    _, _, ranks, _ = collectives
    for result in ranks:
        assert result["broadcast"] == {"text": "from rank 0", "items": [1, 2.5, None]}
        assert result["broadcast_src1"] == "object of rank 1"


def test_barrier(collectives):
    _, _, ranks, _ = collectives
    # Rank 0 wrote the file after a pause and before the barrier; rank 1 looked right after it.
    assert [r["after_barrier_sees_file"] for r in ranks] == [True, True]


def test_rank_zero_first(collectives):
    _, _, ranks, _ = collectives
    assert ranks[1]["rank_zero_first_seen"] == "rank 0 was here"


def test_no_backward_sync_skips_the_all_reduce(collectives):
    _, _, ranks, _ = collectives
    grads = [r["no_backward_sync"] for r in ranks]
    # Inside the context each rank keeps its own gradient, and they differ across ranks.
    for g in grads:
        assert torch.equal(g["inside"], g["expected_local"])
    assert not torch.equal(grads[0]["inside"], grads[1]["inside"])
    # Outside, DDP averages: equal on both ranks.
    average = (grads[0]["expected_local"] + grads[1]["expected_local"]) / 2
    for g in grads:
        assert torch.equal(g["outside"], average)


def test_setup_dataloaders_shards_and_reshuffles(collectives):
    _, _, ranks, _ = collectives
    for epoch in range(2):
        shards = [r["epochs"][epoch] for r in ranks]
        assert len(shards[0]) == len(shards[1]) == 5
        assert sorted(shards[0] + shards[1]) == list(range(10))  # disjoint shards covering the dataset
    for result in ranks:
        assert result["epochs"][0] != result["epochs"][1]  # a new pass is a new epoch: another order
        assert result["batch_devices"] == ["cpu"]


def test_setup_dataloaders_uneven_and_even_shards(collectives):
    _, _, ranks, _ = collectives
    # even_shards=False: each of the 11 samples goes to exactly one rank.
    assert sorted(ranks[0]["uneven"] + ranks[1]["uneven"]) == list(range(11))
    # The default pads to equal shards (12 = 11 + one repeated sample).
    assert len(ranks[0]["even"]) == len(ranks[1]["even"]) == 6
    assert set(ranks[0]["even"] + ranks[1]["even"]) == set(range(11))


def test_setup_dataloaders_refuses_an_unrebuildable_subclass(collectives):
    _, _, ranks, _ = collectives
    for result in ranks:
        message = result["unrebuildable_error"]
        assert message is not None and "UnrebuildableLoader" in message and "flag" in message
        assert "use_distributed_sampler=False" in message


def test_seed_everything_workers_seeds_each_worker_of_each_rank(collectives):
    """seed_everything(workers=True): 2 workers on each of 2 ranks draw from torch, numpy and python differently
    (without a worker_init_fn numpy repeats the parent's state in every worker, and equally seeded ranks give their
    workers the same torch seeds), and the same again from the same seed."""
    _, _, ranks, _ = collectives
    for result in ranks:
        first, again = result["worker_draws"]
        assert torch.equal(first, again)
        assert sorted(first[:, 1].tolist()) == [0, 0, 1, 1]  # each rank's 4 samples, loaded by its 2 workers
    draws = torch.cat([result["worker_draws"][0] for result in ranks])
    assert sorted(draws[:, 0].tolist()) == list(range(8))
    for generator in (2, 3, 4):  # torch, numpy, python: 8 different draws
        assert len(set(draws[:, generator].tolist())) == 8, draws


def test_print_on_rank_zero_only(collectives):
    _, proc, _, _ = collectives
    assert "fabric.print on rank 0" in proc.stdout
    assert "fabric.print on rank 1" not in proc.stdout + proc.stderr


def _assert_trained_in_lockstep(ranks):
    for name, weight in ranks[0]["weights"].items():
        assert torch.equal(weight, ranks[1]["weights"][name])
    changed = [not torch.equal(w, ranks[0]["initial_weights"][n]) for n, w in ranks[0]["weights"].items()]
    return changed


@pytest.mark.parametrize("strategy", ["ddp_spawn", "ddp_fork"])
def test_multiprocessing_strategies(run_ranks, tmp_path, strategy):
    proc, ranks = run_ranks([WORKER, "train", strategy, tmp_path], tmp_path)
    assert [r["rank"] for r in ranks] == [0, 1] and [r["world_size"] for r in ranks] == [2, 2]
    assert {r["wrapper"] for r in ranks} == {"DistributedDataParallel"}
    assert all(_assert_trained_in_lockstep(ranks))
    # The launching process is neither rank; launch() handed it rank 0's return value (a tensor, and more than a
    # pipe's buffer holds).
    returned = list(tmp_path.glob("returned_pid*.txt"))
    assert [p.read_text() for p in returned] == ["rank 0 done, tensor intact: True"]
    assert returned[0].name not in {f"returned_pid{r['pid']}.txt" for r in ranks}


def test_ddp_notebook_runs_without_a_script(run_ranks, tmp_path):
    """A notebook has no script to re-run: the function is defined in `__main__` of a `python -c` process."""
    code = textwrap.dedent(f"""
        from fabric_kit import Fabric
        from tests.strategies import ddp_worker

        def cell(fabric):
            return ddp_worker.main(fabric, "train", {str(tmp_path)!r})

        print(ddp_worker.describe(Fabric(accelerator="cpu", devices=2, strategy="ddp_notebook").launch(cell)))
    """)
    proc, ranks = run_ranks(["-c", code], tmp_path)
    assert proc.stdout.strip().splitlines()[-1] == "rank 0 done, tensor intact: True"
    assert all(_assert_trained_in_lockstep(ranks))


def test_ddp_without_a_script_says_what_to_use(run_ranks):
    code = "from fabric_kit import Fabric; Fabric(accelerator='cpu', devices=2, strategy='ddp').launch()"
    proc = run_ranks(["-c", code], check=False)
    assert proc.returncode != 0
    assert "not started from a script" in proc.stderr and "ddp_notebook" in proc.stderr


@pytest.mark.parametrize("strategy", ["ddp_find_unused_parameters_true", "ddp_spawn_find_unused_parameters_true"])
def test_find_unused_parameters(run_ranks, tmp_path, strategy):
    _, ranks = run_ranks([WORKER, "unused", strategy, tmp_path], tmp_path)
    assert [r["find_unused_parameters"] for r in ranks] == [True, True]
    changed = dict(zip(ranks[0]["weights"], _assert_trained_in_lockstep(ranks), strict=False))
    assert changed == {"used.weight": True, "used.bias": True, "unused.weight": False, "unused.bias": False}


def test_plain_ddp_fails_on_the_unused_branch(run_ranks, tmp_path):
    """The model of test_find_unused_parameters does need the option."""
    proc = run_ranks([WORKER, "unused", "ddp_spawn", tmp_path], check=False)
    assert proc.returncode != 0
    assert "find_unused_parameters=True" in proc.stderr
