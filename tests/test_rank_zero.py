"""`rank_zero_only` and its `rank`: read from the launchers' variables in Lightning's order, usable as a decorator at
import time, assignable as in Lightning; lightning_utilities' `rank_zero_only.rank` is given the same rank."""
import subprocess
import sys

import pytest
from lightning.fabric.utilities.rank_zero import _get_rank  # Lightning's reading of the same variables: the reference

from fabric_kit import Fabric
from fabric_kit.rank_zero import RANK_VARIABLES, RankZeroOnly, global_rank, rank_zero_only
from tests.helpers.processes import process_environment

ENVIRONMENTS = [{}, {"RANK": "0"}, {"RANK": "2"}, {"LOCAL_RANK": "3"}, {"RANK": "0", "LOCAL_RANK": "3"},
                {"SLURM_PROCID": "1"}, {"LOCAL_RANK": "0", "SLURM_PROCID": "5"}, {"JSM_NAMESPACE_RANK": "4"},
                {"SLURM_PROCID": "0", "JSM_NAMESPACE_RANK": "4"}]


@pytest.mark.parametrize("variables", ENVIRONMENTS, ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()) or "none")
def test_rank_is_read_as_lightning_reads_it(variables, clean_env, monkeypatch):
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    expected = _get_rank() or 0
    assert global_rank() == rank_zero_only.rank == expected
    ran = []
    rank_zero_only(lambda: ran.append(True))()
    assert ran == ([True] if expected == 0 else [])


def test_only_local_rank_three_does_not_run(clean_env, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert rank_zero_only(lambda: "ran", default="skipped")() == "skipped"


def test_an_assigned_rank_wins_over_the_environment(clean_env, monkeypatch):
    decorator = RankZeroOnly()
    monkeypatch.setenv("RANK", "1")
    greet = decorator(lambda: "hello")
    assert greet() is None
    decorator.rank = 0
    assert decorator.rank == 0 and greet() == "hello"
    with pytest.raises(ValueError, match=r"rank_zero_only.rank=-1 is not a rank"):
        decorator.rank = -1


def test_mpi_variables_come_after_lightnings():
    assert RANK_VARIABLES[:4] == ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


SCRIPT = """
import sys
{imports}
from lightning_utilities.core.rank_zero import rank_zero_only as utilities_rank_zero_only

@rank_zero_only
def ours():
    print("ours ran")

@utilities_rank_zero_only
def theirs():
    print("theirs ran")

ours()
theirs()
print("ranks", rank_zero_only.rank, utilities_rank_zero_only.rank)
"""


LOOPS = "import loops\nfrom loops.utilities import rank_zero_only"
FABRIC_KIT_SECOND = ("import lightning_utilities.core.rank_zero\nimport fabric_kit\n"
                     "from fabric_kit.utilities import rank_zero_only")


@pytest.mark.parametrize(("imports", "variables", "rank"), [
    (LOOPS, {}, 0), (LOOPS, {"LOCAL_RANK": "3"}, 3), (LOOPS, {"RANK": "1"}, 1), (FABRIC_KIT_SECOND, {"RANK": "2"}, 2)],
    ids=["loops-alone", "loops-local-rank-3", "loops-rank-1", "lightning_utilities-then-fabric_kit-rank-2"])
def test_decorating_at_import_time_before_any_fabric(imports, variables, rank):
    """What a Hydra template's utils do: decorate with either `rank_zero_only` at import and call it before a
    Trainer or Fabric exists. Both know the rank; each function runs on rank 0 only."""
    out = subprocess.run([sys.executable, "-c", SCRIPT.format(imports=imports)], capture_output=True, text=True,
                         env=process_environment(**variables), timeout=600)
    assert out.returncode == 0, out.stderr
    ran = ["ours ran", "theirs ran"] if rank == 0 else []
    assert out.stdout.splitlines() == [*ran, f"ranks {rank} {rank}"]


def test_import_fabric_kit_does_not_import_lightning_utilities():
    code = "import sys, fabric_kit; print(any(m.startswith('lightning_utilities') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300,
                         env=process_environment())
    assert out.stdout.strip() == "False"


def test_launch_gives_lightning_utilities_the_strategys_rank(clean_env, monkeypatch):
    import lightning_utilities.core.rank_zero as utilities
    monkeypatch.setattr(utilities.rank_zero_only, "rank", 7, raising=False)
    Fabric(accelerator="cpu", devices=1).launch()
    assert utilities.rank_zero_only.rank == 0


def test_spawned_ranks_share_their_rank_with_lightning_utilities(run_ranks, tmp_path):
    """Each rank of `ddp_spawn` imported lightning_utilities before it learnt its rank; launching tells it."""
    _, ranks = run_ranks(["tests/strategies/launchers/scripts/spawned_rank_zero.py", tmp_path], tmp_path, timeout=600)
    assert ranks == [{"theirs": 0, "ours": 0, "ran": ["theirs", "ours"]}, {"theirs": 1, "ours": 1, "ran": []}]
