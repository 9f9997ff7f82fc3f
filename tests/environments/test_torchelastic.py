import os

import pytest

from fabric_kit.environments import TorchElasticEnvironment

TORCHRUN = dict(
    TORCHELASTIC_RUN_ID="abc", RANK=5, WORLD_SIZE=8, LOCAL_RANK=1, GROUP_RANK=1, MASTER_ADDR="node1", MASTER_PORT=29500
)


def test_reads_torchrun_variables(setenv):
    setenv(**TORCHRUN)
    assert TorchElasticEnvironment.detect()
    env = TorchElasticEnvironment()
    assert env.creates_processes_externally
    assert env.main_address == "node1"
    assert env.main_port == 29500
    assert (env.world_size(), env.global_rank(), env.local_rank(), env.node_rank()) == (8, 5, 1, 1)
    env.set_world_size(2)
    env.set_global_rank(0)
    assert (env.world_size(), env.global_rank()) == (8, 5)  # torchrun decides


def test_detected_from_the_run_id_alone(setenv):
    # As Lightning (torch.distributed.is_torchelastic_launched): TORCHELASTIC_RUN_ID is torchrun's mark.
    assert not TorchElasticEnvironment.detect()
    setenv(TORCHELASTIC_RUN_ID="abc")
    assert TorchElasticEnvironment.detect()


def test_validate_settings(setenv):
    setenv(**TORCHRUN)
    env = TorchElasticEnvironment()
    env.validate_settings(num_devices=4, num_nodes=2)
    env.validate_settings(num_devices="auto", num_nodes=2)
    env.validate_settings(num_devices=None, num_nodes=1)
    with pytest.raises(ValueError, match=r"devices=3 x num_nodes=2 = 6.*WORLD_SIZE=8"):
        env.validate_settings(num_devices=3, num_nodes=2)


def test_missing_endpoint_defaults_with_a_warning(setenv, monkeypatch):
    setenv(**TORCHRUN)
    monkeypatch.delenv("MASTER_ADDR")
    monkeypatch.delenv("MASTER_PORT")
    env = TorchElasticEnvironment()
    with pytest.warns(UserWarning, match="without MASTER_ADDR; using MASTER_ADDR=127.0.0.1"):
        assert env.main_address == "127.0.0.1"
    with pytest.warns(UserWarning, match="without MASTER_PORT; using MASTER_PORT=12910"):
        assert env.main_port == 12910
    assert (os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]) == ("127.0.0.1", "12910")  # for libraries too


def test_missing_rank_is_named(setenv, monkeypatch):
    setenv(**TORCHRUN)
    monkeypatch.delenv("RANK")
    with pytest.raises(ValueError, match="RANK is not set"):
        TorchElasticEnvironment().global_rank()
