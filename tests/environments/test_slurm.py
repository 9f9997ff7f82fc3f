import os
import signal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fabric_kit.environments import SLURMEnvironment
from fabric_kit.environments.slurm import expand_hostlist, requeue_job, slurm_job_id

SRUN = dict(
    SLURM_NTASKS=8,
    SLURM_PROCID=5,
    SLURM_LOCALID=1,
    SLURM_NODEID=1,
    SLURM_NODELIST="gpu[07-08],cpu1",
    SLURM_JOB_ID=1234567,
    SLURM_JOB_NAME="train.sh",
    SLURM_NTASKS_PER_NODE=4,
    SLURM_NNODES=2,
)


def test_reads_srun_variables(setenv):
    setenv(**SRUN)
    assert SLURMEnvironment.detect()
    env = SLURMEnvironment()
    assert env.creates_processes_externally
    assert env.main_address == "gpu07"
    assert env.main_port == 15000 + 4567
    assert (env.world_size(), env.global_rank(), env.local_rank(), env.node_rank()) == (8, 5, 1, 1)


def test_master_port_overrides_the_derived_port(setenv):
    setenv(**SRUN, MASTER_PORT=2222)
    assert SLURMEnvironment().main_port == 2222


def test_job_nodelist_is_the_fallback(setenv, monkeypatch):
    setenv(**SRUN, SLURM_JOB_NODELIST="a[3-4]")
    monkeypatch.delenv("SLURM_NODELIST")
    assert SLURMEnvironment().main_address == "a3"


@pytest.mark.parametrize("job_name", ["bash", "interactive"])
def test_interactive_allocation_is_not_detected(setenv, job_name):
    setenv(**SRUN)
    setenv(SLURM_JOB_NAME=job_name)
    assert not SLURMEnvironment.detect()


def test_a_task_count_alone_is_slurm(setenv):
    # As Lightning: SLURM_NTASKS is what srun sets for every task; no other variable is needed to detect it.
    setenv(SLURM_NTASKS=2)
    assert SLURMEnvironment.detect()


def test_not_detected_outside_slurm():
    assert not SLURMEnvironment.detect()


def test_validate_settings(setenv):
    setenv(**SRUN)
    env = SLURMEnvironment()
    env.validate_settings(num_devices=4, num_nodes=2)
    env.validate_settings(num_devices="auto", num_nodes=2)
    with pytest.raises(ValueError, match=r"devices=2 .*SLURM_NTASKS_PER_NODE=4.*--ntasks-per-node=2"):
        env.validate_settings(num_devices=2, num_nodes=2)
    with pytest.raises(ValueError, match=r"num_nodes=3 .*SLURM_NNODES=2.*--nodes=3"):
        env.validate_settings(num_devices=4, num_nodes=3)


def test_validate_settings_without_per_node_request(setenv, monkeypatch):
    setenv(**SRUN)
    env = SLURMEnvironment()
    monkeypatch.delenv("SLURM_NTASKS_PER_NODE")
    env.validate_settings(num_devices=3, num_nodes=2)


def test_several_tasks_without_a_per_node_count_are_refused(setenv, monkeypatch):
    # As Lightning: `--ntasks=8` alone lets SLURM spread the tasks unevenly over the nodes.
    setenv(**SRUN)
    monkeypatch.delenv("SLURM_NTASKS_PER_NODE")
    with pytest.raises(RuntimeError, match="--ntasks=8 without --ntasks-per-node.*--ntasks-per-node=8"):
        SLURMEnvironment()
    setenv(SLURM_NTASKS=1)
    SLURMEnvironment()  # one task: nothing to place


def test_requeue_settings(setenv):
    setenv(**SRUN)
    env = SLURMEnvironment()
    assert (env.auto_requeue, env.requeue_signal) == (True, signal.SIGUSR1)
    env = SLURMEnvironment(auto_requeue=False, requeue_signal=signal.SIGHUP)
    assert (env.auto_requeue, env.requeue_signal) == (False, signal.SIGHUP)
    with pytest.raises(TypeError, match="requeue_signal='USR1' is not supported; accepted: a signal.Signals"):
        SLURMEnvironment(requeue_signal="USR1")


def test_users_master_addr_is_the_main_address(setenv):
    setenv(**SRUN, MASTER_ADDR="10.0.0.7")
    assert SLURMEnvironment().main_address == "10.0.0.7"


@pytest.mark.parametrize(
    ("hostlist", "hosts"),
    [
        ("node[001-003,7],gpu5", ["node001", "node002", "node003", "node7", "gpu5"]),
        ("single", ["single"]),
        ("n[08-10]", ["n08", "n09", "n10"]),
        ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
        ("[1-2]x", ["1x", "2x"]),
        ("a-b[1],c.d", ["a-b1", "c.d"]),
        ("alpha beta", ["alpha", "beta"]),
        (" alpha,  beta gamma ", ["alpha", "beta", "gamma"]),
        ("1.2.3.[089, 100-101]", ["1.2.3.089", "1.2.3.100", "1.2.3.101"]),
    ],
)
def test_expand_hostlist_examples(hostlist, hosts):
    assert expand_hostlist(hostlist) == hosts


@pytest.mark.parametrize("bad", ["", "a,,b", "n[1-", "n1]", "n[3-1]", "n[x]", "n[1-2-3]", "n[]"])
def test_expand_hostlist_rejects_malformed(bad):
    with pytest.raises(ValueError, match="Malformed SLURM host list"):
        expand_hostlist(bad)


_names = st.text("abcxyz-.", min_size=1, max_size=6)
_ranges = st.tuples(st.integers(0, 500), st.integers(0, 5), st.integers(1, 4))  # start, length - 1, pad width


def _format_range(start, extra, width):
    first = str(start).zfill(width)
    return first if extra == 0 else f"{first}-{start + extra}"


def _expected(start, extra, width):
    return [str(n).zfill(width) for n in range(start, start + extra + 1)]


_groups = st.one_of(
    _names.map(lambda name: (name, [name])),
    st.tuples(_names, st.lists(_ranges, min_size=1, max_size=3), st.text("abc", max_size=2)).map(
        lambda t: (
            f"{t[0]}[{','.join(_format_range(*r) for r in t[1])}]{t[2]}",
            [f"{t[0]}{n}{t[2]}" for r in t[1] for n in _expected(*r)],
        )
    ),
)


@given(st.lists(_groups, min_size=1, max_size=5))
def test_expand_hostlist_round_trip(groups):
    hostlist = ",".join(text for text, _ in groups)
    assert expand_hostlist(hostlist) == [host for _, hosts in groups for host in hosts]


@pytest.fixture
def scontrol(tmp_path, monkeypatch):
    """A stub `scontrol` first on PATH: it records its arguments and exits with the status in `./status`."""
    calls, status = tmp_path / "calls", tmp_path / "status"
    status.write_text("0")
    stub = tmp_path / "scontrol"
    stub.write_text(f'#!/bin/sh\necho "$@" >> {calls}\necho "job not requeueable" >&2\nexit $(cat {status})\n')
    stub.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    return calls, status


def test_requeue_calls_scontrol_once_with_the_job_id(setenv, scontrol):
    setenv(**SRUN)
    requeue_job()
    assert scontrol[0].read_text() == "requeue 1234567\n"


def test_a_task_of_a_job_array_requeues_itself(setenv, scontrol):
    setenv(**SRUN, SLURM_ARRAY_JOB_ID=99, SLURM_ARRAY_TASK_ID=3)
    assert slurm_job_id() == "99_3"
    requeue_job()
    assert scontrol[0].read_text() == "requeue 99_3\n"


def test_requeue_without_scontrol_says_so(setenv, monkeypatch, tmp_path):
    setenv(**SRUN)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="cannot requeue SLURM job 1234567: `scontrol` is not on PATH"):
        requeue_job()


def test_a_failed_requeue_shows_scontrols_message(setenv, scontrol):
    setenv(**SRUN)
    scontrol[1].write_text("1")
    with pytest.raises(RuntimeError, match="`scontrol requeue 1234567` failed with exit status 1: job not requeueable"):
        requeue_job()


def test_outside_slurm_there_is_no_job_to_requeue():
    with pytest.raises(ValueError, match="SLURM_JOB_ID is not set"):
        requeue_job()


def test_lightnings_static_helpers(setenv):
    setenv(**SRUN)
    assert SLURMEnvironment.resolve_root_node_address("1.2.3.[089, 100-110]") == "1.2.3.089"
    assert SLURMEnvironment.resolve_root_node_address("alpha beta") == "alpha"
    assert (SLURMEnvironment.job_name(), SLURMEnvironment.job_id()) == ("train.sh", 1234567)
    setenv(SLURM_JOB_NAME="bash")  # an interactive allocation: its runs are not the job's
    assert SLURMEnvironment.job_id() is None
