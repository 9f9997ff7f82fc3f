import socket

import pytest

from fabric_kit.environments import LSFEnvironment


@pytest.fixture
def jsrun(setenv, tmp_path, monkeypatch):
    """Two compute hosts with two slots each, this process being rank 3 on the second host."""
    rankfile = tmp_path / "rankfile"
    rankfile.write_text("launch\nhostA\nhostA\nhostB\nhostB\n")
    monkeypatch.setattr(socket, "gethostname", lambda: "hostB")
    setenv(
        LSB_JOBID=4567891,
        LSB_DJOB_RANKFILE=rankfile,
        JSM_NAMESPACE_SIZE=4,
        JSM_NAMESPACE_RANK=3,
        JSM_NAMESPACE_LOCAL_RANK=1,
    )
    return rankfile


def test_reads_jsrun_variables_and_rankfile(jsrun):
    assert LSFEnvironment.detect()
    env = LSFEnvironment()
    assert env.creates_processes_externally
    assert env.main_address == "hostA"
    assert env.main_port == 10000 + 7891
    assert (env.world_size(), env.global_rank(), env.local_rank(), env.node_rank()) == (4, 3, 1, 1)


def test_master_port_overrides_the_derived_port(jsrun, setenv):
    setenv(MASTER_PORT=3333)
    assert LSFEnvironment().main_port == 3333


@pytest.mark.parametrize("missing", ["LSB_JOBID", "LSB_DJOB_RANKFILE", "JSM_NAMESPACE_SIZE", "JSM_NAMESPACE_RANK"])
def test_not_detected_without_required_variable(jsrun, monkeypatch, missing):
    monkeypatch.delenv(missing)
    assert not LSFEnvironment.detect()


def test_unknown_host_is_named(jsrun, monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "elsewhere")
    with pytest.raises(ValueError, match=r"'elsewhere'.*\['hostA', 'hostB'\]"):
        LSFEnvironment().node_rank()


def test_empty_rankfile_is_named(jsrun):
    jsrun.write_text("launch\n")
    with pytest.raises(ValueError, match=r"LSB_DJOB_RANKFILE=.*no compute hosts"):
        LSFEnvironment().main_address
