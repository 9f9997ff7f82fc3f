"""`Fabric(...)` arguments (and what `fabric run` exports) resolve into components; a bad one is an error naming the
value and what is accepted."""
import subprocess
import sys

import pytest
import torch

from fabric_kit import Fabric
from fabric_kit.accelerators import CPUAccelerator
from fabric_kit.environments import LocalEnvironment
from fabric_kit.precision import DoublePrecision, MixedPrecision, Precision
from fabric_kit.strategies import DDPStrategy, SingleDeviceStrategy
from fabric_kit.strategies.launchers.multiprocessing import MultiprocessingLauncher
from fabric_kit.strategies.launchers.subprocess_script import SubprocessScriptLauncher

pytestmark = pytest.mark.usefixtures("clean_env")


def test_defaults_on_one_cpu():
    fabric = Fabric(accelerator="cpu")
    assert isinstance(fabric.strategy, SingleDeviceStrategy) and fabric.strategy.launcher is None
    assert isinstance(fabric.accelerator, CPUAccelerator)
    assert type(fabric.strategy.precision) is Precision
    assert fabric.device == torch.device("cpu")
    assert (fabric.world_size, fabric.global_rank, fabric.local_rank, fabric.node_rank) == (1, 0, 0, 0)
    assert fabric.is_global_zero


@pytest.mark.parametrize(("strategy", "launcher", "start_method", "ddp_kwargs"), [
    ("auto", SubprocessScriptLauncher, "popen", {}),
    ("ddp", SubprocessScriptLauncher, "popen", {}),
    ("ddp_spawn", MultiprocessingLauncher, "spawn", {}),
    ("ddp_fork", MultiprocessingLauncher, "fork", {}),
    ("ddp_notebook", MultiprocessingLauncher, "fork", {}),
    ("ddp_find_unused_parameters_true", SubprocessScriptLauncher, "popen", {"find_unused_parameters": True}),
])
def test_ddp_presets(strategy, launcher, start_method, ddp_kwargs):
    fabric = Fabric(accelerator="cpu", devices=2, strategy=strategy)
    assert isinstance(fabric.strategy, DDPStrategy)
    assert isinstance(fabric.strategy.launcher, launcher)
    assert fabric.strategy.start_method == start_method and fabric.strategy.ddp_kwargs == ddp_kwargs
    assert fabric.world_size == 2 and fabric.global_rank == 0
    assert fabric.strategy.process_group_backend == "gloo"
    assert isinstance(fabric.strategy.cluster_environment, LocalEnvironment)
    assert fabric.strategy.distributed_sampler_kwargs == {"num_replicas": 2, "rank": 0}


def test_strategy_instance_gets_the_missing_components():
    strategy = DDPStrategy(start_method="spawn")
    fabric = Fabric(accelerator="cpu", devices=2, strategy=strategy, precision="bf16-mixed")
    assert fabric.strategy is strategy
    assert isinstance(strategy.accelerator, CPUAccelerator)
    assert isinstance(strategy.precision, MixedPrecision) and strategy.precision.dtype == torch.bfloat16
    assert strategy.parallel_devices == [torch.device("cpu")] * 2


def test_plugins():
    precision = DoublePrecision()
    environment = LocalEnvironment()
    fabric = Fabric(accelerator="cpu", devices=2, plugins=[precision, environment])
    assert fabric.strategy.precision is precision and fabric.strategy.cluster_environment is environment
    with pytest.raises(TypeError, match="plugin 'nonsense' is not supported; accepted: a Precision, a Cluster"):
        Fabric(accelerator="cpu", plugins="nonsense")


# -- bad input ---------------------------------------------------------------------------------------------------
def test_auto_in_a_notebook_forks(monkeypatch):
    """An IPython kernel (Jupyter) sets `sys.ps1`, as the Python prompt does: `strategy="auto"` then forks the ranks
    (`ddp_fork`, as in Lightning), and a strategy that would run the script again is refused."""
    monkeypatch.setattr(sys, "ps1", "In : ", raising=False)
    strategy = Fabric(accelerator="cpu", devices=2).strategy
    assert isinstance(strategy.launcher, MultiprocessingLauncher) and strategy.launcher.start_method == "fork"
    assert isinstance(Fabric(accelerator="cpu", devices=1).strategy, SingleDeviceStrategy)
    with pytest.raises(RuntimeError, match="strategy='ddp' starts its ranks by running the script again.*ddp_fork"):
        Fabric(accelerator="cpu", devices=2, strategy="ddp")
    monkeypatch.delattr(sys, "ps1")
    assert isinstance(Fabric(accelerator="cpu", devices=2).strategy.launcher, SubprocessScriptLauncher)


def test_unknown_accelerator():
    with pytest.raises(ValueError) as error:
        Fabric(accelerator="tpu9")
    message = str(error.value)
    assert "'tpu9'" in message and all(name in message for name in ("auto", "cpu", "cuda", "gpu", "mps"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_unavailable_accelerator():
    with pytest.raises(RuntimeError, match="accelerator='cuda' was requested but is not available"):
        Fabric(accelerator="cuda")


def test_strategy_names_are_case_insensitive():
    fabric = Fabric(accelerator="cpu", devices=2, strategy="DDP_Spawn")
    assert isinstance(fabric.strategy, DDPStrategy) and fabric.strategy.start_method == "spawn"


def test_dp_on_cpu_falls_back_to_ddp_with_a_warning():
    with pytest.warns(UserWarning, match="strategy='dp' .* does not run on CPUs: using strategy='ddp'"):
        fabric = Fabric(accelerator="cpu", devices=2, strategy="dp")
    assert isinstance(fabric.strategy, DDPStrategy) and fabric.world_size == 2


def test_unknown_strategy():
    with pytest.raises(ValueError) as error:
        Fabric(accelerator="cpu", strategy="dpp")
    message = str(error.value)
    assert "'dpp'" in message
    for name in ("auto", "single_device", "ddp", "ddp_spawn", "ddp_fork", "ddp_notebook",
                 "ddp_find_unused_parameters_true"):
        assert name in message


@pytest.mark.parametrize("precision", ["17", 8, "fp16", "bf32-mixed"])
def test_unknown_precision(precision):
    with pytest.raises(ValueError) as error:
        Fabric(accelerator="cpu", precision=precision)
    message = str(error.value)
    assert f"precision={precision!r}" in message
    for name in ("32-true", "64-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "fp8",
                 "32", "64", "16", "bf16"):
        assert name in message


@pytest.mark.parametrize("devices", [0, -2, "0", "-3", "two", [], [-1], 1.5, True])
def test_bad_devices(devices):
    with pytest.raises(ValueError) as error:
        Fabric(accelerator="cpu", devices=devices)
    message = str(error.value)
    assert f"devices={devices!r}" in message or f"devices={devices}" in message
    assert "positive" in message or "non-negative" in message or "found no" in message


def test_devices_minus_one_means_all():
    # Lightning's meaning: -1 is every available device (one process on the CPU).
    assert Fabric(accelerator="cpu", devices=-1).world_size == 1


@pytest.mark.parametrize("devices", [2, "2", [0, 1], "0,1"])
def test_device_forms(devices):
    assert Fabric(accelerator="cpu", devices=devices).world_size == 2


@pytest.mark.parametrize("num_nodes", [0, -1, "2", 1.0])
def test_bad_num_nodes(num_nodes):
    with pytest.raises(ValueError, match=f"num_nodes={num_nodes!r} is not valid: pass a positive integer"):
        Fabric(accelerator="cpu", num_nodes=num_nodes)


def test_single_device_strategy_with_many_devices():
    with pytest.raises(ValueError, match="strategy='single_device' runs one process, but devices=2"):
        Fabric(accelerator="cpu", devices=2, strategy="single_device")


# -- what `fabric run` exports -----------------------------------------------------------------------------------
def test_cli_strategy_disagreeing_with_the_script(monkeypatch):
    monkeypatch.setenv("FABRIC_KIT_STRATEGY", "ddp")
    with pytest.raises(ValueError) as error:
        Fabric(accelerator="cpu", strategy="fsdp")
    message = str(error.value)
    assert "--strategy" in message and "ddp" in message and "strategy='fsdp'" in message


def test_cli_values_fill_in_defaults(monkeypatch):
    monkeypatch.setenv("FABRIC_KIT_ACCELERATOR", "cpu")
    monkeypatch.setenv("FABRIC_KIT_STRATEGY", "ddp_spawn")
    monkeypatch.setenv("FABRIC_KIT_DEVICES", "2")
    monkeypatch.setenv("FABRIC_KIT_PRECISION", "bf16-mixed")
    fabric = Fabric()
    assert isinstance(fabric.accelerator, CPUAccelerator)
    assert isinstance(fabric.strategy, DDPStrategy) and fabric.strategy.start_method == "spawn"
    assert fabric.world_size == 2
    assert fabric.strategy.precision.precision == "bf16-mixed"


def test_cli_values_agreeing_with_the_script(monkeypatch):
    monkeypatch.setenv("FABRIC_KIT_PRECISION", "16-mixed")
    monkeypatch.setenv("FABRIC_KIT_DEVICES", "2")
    fabric = Fabric(accelerator="cpu", precision=16, devices=2)  # an alias of the same precision agrees
    assert fabric.strategy.precision.precision == "16-mixed" and fabric.world_size == 2


@pytest.mark.parametrize(("variable", "exported", "argument", "flag"), [
    ("FABRIC_KIT_PRECISION", "bf16-mixed", {"precision": "16-mixed"}, "--precision"),
    ("FABRIC_KIT_DEVICES", "2", {"devices": 3}, "--devices"),
    ("FABRIC_KIT_ACCELERATOR", "cpu", {"accelerator": "cuda"}, "--accelerator"),
    ("FABRIC_KIT_NUM_NODES", "2", {"num_nodes": 3}, "--num-nodes"),
])
def test_cli_values_disagreeing_with_the_script(monkeypatch, variable, exported, argument, flag):
    monkeypatch.setenv(variable, exported)
    with pytest.raises(ValueError) as error:
        Fabric(**argument)
    message = str(error.value)
    (name, value), = argument.items()
    assert f"{flag}={exported}" in message and f"{name}={value!r}" in message


# -- import cost -------------------------------------------------------------------------------------------------
def test_import_does_not_pull_optional_packages():
    code = ("import sys, fabric_kit\n"
            "heavy = ('deepspeed', 'torch_xla', 'tensorboardX', 'loops', 'lightning', 'lightning_fabric')\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
