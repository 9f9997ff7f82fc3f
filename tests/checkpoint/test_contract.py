"""The one checkpoint contract (`Strategy.save_checkpoint` / `load_checkpoint`, the same arguments everywhere),
checked the same way under every registered strategy that runs on this machine's CPUs.

tests/checkpoint/contract_worker.py runs the scenario (see its docstring) in real processes, several cases per
start-up: single_device with ddp_fork and ddp_spawn (one process that starts their ranks), ddp with the FSDP cases
(2 processes), DeepSpeed's stages 1-3 and its two offload presets (2 processes). The XLA strategies need torch_xla:
their variant is tests/xla/test_xla_contract.py (`make test-xla`). A strategy registered later must be added to
COVERS, SAME_AS or NOT_RUNNABLE below, or test_every_registered_strategy_is_accounted_for fails.
"""
import importlib.util
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from fabric_kit import Fabric
from fabric_kit.strategies.registry import STRATEGY_REGISTRY as STRATEGIES
from tests.checkpoint.contract_worker import CASES, PRECISION_MARKER, SCALE_AT_SAVE

WORKER = Path(__file__).with_name("contract_worker.py")

GROUPS = [["ddp_fork", "ddp_spawn", "single_device"],
          ["ddp", "fsdp_sharded", "fsdp_full", "fsdp_cpu_offload"],
          ["deepspeed_stage_1", "deepspeed_stage_2", "deepspeed_stage_3", "deepspeed_stage_2_offload",
           "deepspeed_stage_3_offload"]]
"""Cases that share one run of the worker (its process start-up)."""
COVERS = {"single_device": ["single_device"], "ddp": ["ddp"], "ddp_spawn": ["ddp_spawn"], "ddp_fork": ["ddp_fork"],
          "fsdp": ["fsdp_sharded", "fsdp_full"], "fsdp_cpu_offload": ["fsdp_cpu_offload"],
          "deepspeed_stage_1": ["deepspeed_stage_1"], "deepspeed_stage_2": ["deepspeed_stage_2"],
          "deepspeed_stage_3": ["deepspeed_stage_3"], "deepspeed_stage_2_offload": ["deepspeed_stage_2_offload"],
          "deepspeed_stage_3_offload": ["deepspeed_stage_3_offload"]}
"""Registered name -> the cases that run it."""
SAME_AS = {
    "ddp_notebook": ("ddp_fork", set(), "the same class and arguments as ddp_fork"),
    "ddp_find_unused_parameters_true": ("ddp", {"find_unused_parameters"},
                                        "a DistributedDataParallel argument that checkpoints never see"),
    "ddp_spawn_find_unused_parameters_true": ("ddp_spawn", {"find_unused_parameters"},
                                              "a DistributedDataParallel argument that checkpoints never see"),
    "deepspeed": ("deepspeed_stage_2", {"stage"}, "ZeRO stage 2 is what it builds without a config"),
}
"""Registered name -> (the covered name it only differs from in arguments, those arguments, why they do not matter
to checkpoints)."""
NOT_RUNNABLE = {
    "single_xla": "needs torch_xla: tests/xla/test_xla_contract.py runs it on XLA's CPU device (`make test-xla`)",
    "xla": "needs torch_xla and an XLA host with several devices: tests/xla/test_xla_contract.py checks it against "
           "the stand-in torch_xla only",
    "xla_fsdp": "needs torch_xla and an XLA host with several devices: tests/xla/test_xla_contract.py checks it "
                "against the stand-in torch_xla only",
}
DEEPSPEED = [case for case in CASES if case.startswith("deepspeed")]
needs_deepspeed = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                     reason="DeepSpeed is not installed: pip install 'fabric_kit[deepspeed]' "
                                            "--no-build-isolation")
ALL_CASES = [pytest.param(case, marks=needs_deepspeed) if case in DEEPSPEED else case for case in CASES]
TIMEOUT = 900  # the first DeepSpeed run in an environment builds DeepSpeed's communication op


def test_every_registered_strategy_is_accounted_for():
    accounted = {*COVERS, *SAME_AS, *NOT_RUNNABLE}
    assert not set(STRATEGIES) - accounted, "registered strategies the contract test neither runs nor excuses"
    assert not accounted - set(STRATEGIES), "names the contract test lists that are no longer registered"
    assert sorted(case for cases in COVERS.values() for case in cases) == sorted(CASES)
    assert sorted(case for group in GROUPS for case in group) == sorted(CASES)
    for name, (covered, arguments, _) in SAME_AS.items():
        entry, reference = STRATEGIES[name], STRATEGIES[covered]
        assert entry.class_path == reference.class_path, name
        differing = {key for key in {*entry.kwargs, *reference.kwargs}
                     if entry.kwargs.get(key) != reference.kwargs.get(key)}
        assert differing == arguments, name


@pytest.fixture(scope="module")
def observed(run_ranks, tmp_path_factory):
    """`observed(case)`: what each rank of the case recorded; the case's group runs once."""
    done = {}

    def get(case):
        if case not in done:
            group = next(group for group in GROUPS if case in group)
            out = tmp_path_factory.mktemp("contract")
            proc = run_ranks([WORKER, out, *group], check=False, timeout=TIMEOUT)
            assert proc.returncode == 0, f"exit status {proc.returncode}\n{proc.stdout}\n{proc.stderr[-5000:]}"
            for name in group:
                _, devices, _ = CASES[name]
                done[name] = [torch.load(out / name / f"rank{rank}.pt", weights_only=False)
                              for rank in range(devices)]
        ranks = done[case]
        for rank in ranks:
            assert "error" not in rank, rank["error"]
        return ranks

    return get


@pytest.mark.parametrize("case", ALL_CASES)
def test_resume_is_bit_exact(observed, case):
    """After loading, each rank draws the same random numbers, its loader yields the same samples and training
    gives the same losses (so weights, optimizer state and dropout masks came back) as right after saving."""
    ranks = observed(case)
    for rank in ranks:
        assert rank["resumed"] == rank["reference"]
        assert rank["step"] == 3 and rank["remainder"] == {"note": "kept"}
    if len(ranks) > 1:  # each rank got its own generators back, not rank 0's
        assert ranks[0]["reference"]["draws"] != ranks[1]["reference"]["draws"]
        assert ranks[0]["reference"]["samples"] != ranks[1]["reference"]["samples"]


@pytest.mark.parametrize("case", ALL_CASES)
def test_precision_state_comes_back(observed, case):
    for rank in observed(case):
        assert rank["precision_loaded"] == [PRECISION_MARKER]
        if CASES[case][2] == "16-mixed":  # the GradScaler's scale, set to 8 before loading
            assert rank["reference"]["scale"] == rank["resumed"]["scale"] == SCALE_AT_SAVE


@pytest.mark.parametrize("case", ALL_CASES)
def test_strict_names_the_missing_entry_and_non_strict_tolerates_it(observed, case):
    for rank in observed(case):
        assert rank["strict"].startswith("KeyError") and "'absent'" in rank["strict"], rank["strict"]
        assert rank["non_strict_absent"] == 1  # left as it was
        assert {"note", "step"} <= set(rank["non_strict_remainder"])  # what the state did not ask for comes back


@pytest.mark.parametrize("case", ALL_CASES)
def test_unpickled_objects_are_refused_unless_trusted(observed, case):
    for rank in observed(case):
        assert rank["unsafe_default"].startswith("UnsafeCheckpointError"), rank["unsafe_default"]
        assert "weights_only=False" in rank["unsafe_default"]
        assert rank["unsafe_trusted"] == "ok" and rank["unsafe_note"] == Fraction(1, 3)


@pytest.mark.parametrize("case", ALL_CASES)
def test_default_safe_load_restores_everything(observed, case):
    for rank in observed(case):
        assert rank["safe_load"] == "ok", rank["safe_load"]


# -- the state's type, in this process --------------------------------------------------------------------------
@pytest.fixture
def fabric(clean_env):
    return Fabric(accelerator="cpu", devices=1)


@pytest.mark.parametrize("state", [["model"], "model", ("model",), 3])
def test_load_refuses_a_state_that_is_not_a_dict(fabric, tmp_path, state):
    model = torch.nn.Linear(2, 2)
    fabric.save(tmp_path / "checkpoint", {"model": model})
    state = [model] if state == ["model"] else state
    with pytest.raises(TypeError, match=f"a dict of the objects to restore.*got {type(state).__name__}"):
        fabric.load(tmp_path / "checkpoint", state)


def test_save_refuses_a_state_that_is_not_a_dict(fabric, tmp_path):
    with pytest.raises(TypeError, match="must be a dict of named entries.*got list"):
        fabric.save(tmp_path / "checkpoint", [torch.nn.Linear(2, 2)])


@pytest.mark.parametrize("obj", [{"model": None}, "model", [1]])
def test_load_raw_refuses_what_is_not_a_module_or_optimizer(fabric, tmp_path, obj):
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "weights.pt")
    with pytest.raises(TypeError, match=f"torch.nn.Module or torch.optim.Optimizer.*got {type(obj).__name__}"):
        fabric.load_raw(tmp_path / "weights.pt", obj)


def test_load_raw_takes_plain_and_set_up_modules_and_optimizers(fabric, tmp_path):
    source = torch.nn.Linear(2, 2)
    source_optimizer = torch.optim.Adam(source.parameters())
    source(torch.ones(1, 2)).sum().backward()
    source_optimizer.step()
    torch.save(source.state_dict(), tmp_path / "model.pt")
    torch.save(source_optimizer.state_dict(), tmp_path / "optimizer.pt")
    for set_up in (False, True):
        model = torch.nn.Linear(2, 2)
        optimizer = torch.optim.Adam(model.parameters())
        if set_up:
            model, optimizer = fabric.setup(model, optimizer)
        fabric.load_raw(tmp_path / "model.pt", model)
        fabric.load_raw(tmp_path / "optimizer.pt", optimizer)
        assert torch.equal(model.weight, source.weight)
        assert optimizer.state_dict()["state"][0]["step"] == 1
