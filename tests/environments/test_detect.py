import pytest

from fabric_kit.environments import (
    LocalEnvironment,
    LSFEnvironment,
    MPIEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
    detect_environment,
)


def test_falls_back_to_local():
    assert type(detect_environment()) is LocalEnvironment


def test_order_is_torchelastic_slurm_lsf_mpi(monkeypatch):
    """With every detector claiming the process, the first in the documented order wins; removing it passes the
    choice to the next."""
    order = [TorchElasticEnvironment, SLURMEnvironment, LSFEnvironment, MPIEnvironment, LocalEnvironment]
    claimed = set(order)
    for cls in order:
        monkeypatch.setattr(cls, "detect", staticmethod(lambda cls=cls: cls in claimed))
    for cls in order:
        assert type(detect_environment()) is cls
        claimed.discard(cls)


def test_torchrun_inside_slurm_is_torchelastic(setenv):
    setenv(SLURM_NTASKS=1, SLURM_JOB_NAME="job")
    assert type(detect_environment()) is SLURMEnvironment
    setenv(TORCHELASTIC_RUN_ID="x", RANK=0, WORLD_SIZE=1, LOCAL_RANK=0, MASTER_ADDR="h", MASTER_PORT=1)
    assert type(detect_environment()) is TorchElasticEnvironment


@pytest.mark.parametrize("cls", [TorchElasticEnvironment, SLURMEnvironment, LSFEnvironment, MPIEnvironment])
def test_nothing_detected_outside_schedulers(cls):
    assert not cls.detect()
