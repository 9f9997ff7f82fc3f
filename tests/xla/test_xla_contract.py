"""The checkpoint contract on XLA; tests/checkpoint/test_contract.py checks it for the other strategies.

`single_xla`, for real: the contract scenario of tests/checkpoint/contract_worker.py on XLA's CPU device
(`make test-xla`: torch 2.9.0 + torch_xla 2.9.0; skipped where torch_xla is not importable). Dropout runs on the
XLA device there, so a bit-exact resume also needs the device generator's state back.

`xla` and `xla_fsdp`: against the stand-in torch_xla of conftest.py only, as no host with several XLA devices is
available. These prove that their checkpoints carry every rank's RNG states (the device generator's, as
`xm.get_rng_state()` reports it, included) and the precision's state, and that loading hands them back
(`xm.set_rng_state` with the saved value), not that a TPU then resumes bit-exactly.
"""
import importlib.util
import os

import pytest
import torch

from fabric_kit.checkpoint.io import load_file
from fabric_kit.checkpoint.state import RESERVED_KEY
from fabric_kit.fabric import Fabric
from tests.checkpoint.contract_worker import scenario


@pytest.mark.skipif(importlib.util.find_spec("torch_xla") is None,
                    reason="torch_xla is not installed: the XLA lane is `make test-xla`")
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_single_xla_resumes_bit_exactly(clean_env, monkeypatch, tmp_path, precision):
    monkeypatch.setenv("PJRT_DEVICE", os.environ.get("PJRT_DEVICE", "CPU"))
    fabric = Fabric(accelerator="xla", devices=1, precision=precision)
    assert type(fabric.strategy).__name__ == "SingleXLAStrategy"
    result = scenario(fabric, str(tmp_path))
    assert result["resumed"] == result["reference"]  # draws, samples, losses
    assert result["step"] == 3 and result["remainder"] == {"note": "kept"}
    assert result["precision_loaded"] == [7]
    assert result["safe_load"] == "ok"
    assert result["strict"].startswith("KeyError") and "'absent'" in result["strict"]
    assert result["non_strict_absent"] == 1
    assert result["unsafe_default"].startswith("UnsafeCheckpointError") and result["unsafe_trusted"] == "ok"
    # The file holds the device generator's state next to the host's, on the CPU.
    own = load_file(tmp_path / "checkpoint")[RESERVED_KEY]
    assert isinstance(own["rng"][0]["xla"], int) and "precision" in own


def _launched(fake_xla, operands_on_cpu, name):
    fabric = Fabric(accelerator="xla", strategy=name, devices=fake_xla.devices)
    fabric.launch(lambda f: None)
    operands_on_cpu()
    loaded = []
    precision = fabric.strategy.precision
    precision.state_dict = lambda: {"marker": 7}
    precision.load_state_dict = loaded.append
    return fabric, loaded


def _resumes_rng_and_precision(fake_xla, fabric, loaded, path, save_state, load_state):
    torch.manual_seed(3)
    fake_xla.rng_seed = 101
    fabric.save(path, save_state)
    expected = torch.rand(3)
    torch.manual_seed(4)
    fake_xla.rng_seed = 5
    fabric.load(path, load_state)
    assert torch.equal(torch.rand(3), expected)  # the host's generators
    assert fake_xla.rng_seed == 101 and ("set_rng_state", (101,), {}) in fake_xla.calls  # the device's
    assert loaded == [{"marker": 7}]


def test_xla_checkpoint_carries_every_rank_rng_and_precision_state(fake_xla, operands_on_cpu, tmp_path):
    fabric, loaded = _launched(fake_xla, operands_on_cpu, "xla")
    path = tmp_path / "checkpoint"
    state = {"weights": torch.ones(2), "step": 0}
    _resumes_rng_and_precision(fake_xla, fabric, loaded, path, {"weights": torch.ones(2), "step": 5}, state)
    assert state["step"] == 5
    own = load_file(path)[RESERVED_KEY]
    assert sorted(own["rng"]) == [0, 1, 2, 3]  # gathered from every (stand-in) rank
    assert own["precision"] == {"marker": 7}


def test_xla_fsdp_shard_files_carry_rng_and_precision_state(fake_xla, operands_on_cpu, tmp_path):
    fabric, loaded = _launched(fake_xla, operands_on_cpu, "xla_fsdp")
    fake_xla.ordinal = 1
    module = torch.nn.Linear(2, 2)
    model = fabric.setup_module(module)
    path = tmp_path / "checkpoint"
    state = {"model": model, "step": 0}
    _resumes_rng_and_precision(fake_xla, fabric, loaded, path, {"model": model, "step": 7}, state)
    assert state["step"] == 7
    shard = load_file(path / "shard-00001-of-00004.ckpt")
    assert sorted(shard[RESERVED_KEY]["rng"]) == [0, 1, 2, 3] and shard["shard_metadata"] == {"model": {
        "world_size": 4}}
    with pytest.raises(RuntimeError, match="before `fabric.setup_module"):
        fabric.load_raw(path, model)
