import pytest

from fabric_kit.environments import KubeflowEnvironment, detect_environment

POD = dict(KUBERNETES_PORT="tcp://10.0.0.1:443", MASTER_ADDR="job-master-0", MASTER_PORT=23456, WORLD_SIZE=3, RANK=2)


def test_reads_operator_variables(setenv):
    setenv(**POD)
    assert KubeflowEnvironment.detect()
    env = KubeflowEnvironment()
    assert env.creates_processes_externally
    assert env.main_address == "job-master-0"
    assert env.main_port == 23456
    assert (env.world_size(), env.global_rank(), env.local_rank(), env.node_rank()) == (3, 2, 0, 2)


@pytest.mark.parametrize("missing", sorted(POD))
def test_detect_needs_every_variable(setenv, monkeypatch, missing):
    setenv(**POD)
    monkeypatch.delenv(missing)
    assert not KubeflowEnvironment.detect()


def test_never_auto_detected(setenv):
    setenv(**POD)
    assert not isinstance(detect_environment(), KubeflowEnvironment)
