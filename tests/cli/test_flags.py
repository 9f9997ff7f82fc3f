"""Flags: what --help promises, what bad input reads like, and how flags become torchrun arguments and variables."""
import argparse
import socket
import subprocess
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fabric_kit.cli.devices import format_devices, parse_devices, processes_per_node
from fabric_kit.cli.main import build_parser, main
from fabric_kit.cli.run import script_environment, torchrun_arguments
from fabric_kit.connector import accelerator_names, precision_names, strategy_names
from tests.helpers.cli_processes import CLI_TESTS, SCRIPT, clean_environment

FLAGS = ("--accelerator", "--strategy", "--devices", "--num-nodes", "--node-rank", "--main-address", "--main-port",
         "--precision", "--max-restarts", "--collective-timeout", "--grace-period", "--module")


def parse(*argv):
    return build_parser().parse_args(["run", *map(str, argv)])


def test_help_documents_every_flag_and_its_accepted_values(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines anywhere
    for word in (*FLAGS, *accelerator_names(), *strategy_names(), *precision_names(), "0,1", "auto", "65535"):
        assert word in text, word


@pytest.mark.parametrize("argv, named", [
    (["run"], "SCRIPT"),
    (["run", "--devices", "0", SCRIPT], "'0'"),
    (["run", "--devices", "-2", SCRIPT], "'-2'"),
    (["run", "--devices", "two", SCRIPT], "'two'"),
    (["run", "--devices", "0,0", SCRIPT], "'0,0'"),
    (["run", "--strategy", "nope", SCRIPT], "'nope'"),
    (["run", "--precision", "8", SCRIPT], "'8'"),
    (["run", "--accelerator", "abacus", SCRIPT], "'abacus'"),
    (["run", "--num-nodes", "0", SCRIPT], "'0'"),
    (["run", "--num-nodes", "2", "--node-rank", "2", SCRIPT], "--node-rank 2"),
    (["run", "--main-port", "70000", SCRIPT], "'70000'"),
    (["run", "--max-restarts", "-1", SCRIPT], "'-1'"),
    (["run", "--collective-timeout", "-5", SCRIPT], "'-5'"),
    (["run", "--collective-timeout", "soon", SCRIPT], "'soon'"),
    (["run", "--grace-period", "1.5", SCRIPT], "'1.5'"),
    (["run", "no_such_script.py"], "'no_such_script.py'"),
    (["run", "--devices", "0,1", "--accelerator", "cpu", SCRIPT], "--devices 0,1"),
    (["launch", SCRIPT], "'launch'"),
])
def test_bad_input_is_one_line_with_status_2(argv, named, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in argv])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("fabric"), error
    assert named in error


@pytest.mark.parametrize("flag, accepted", [
    ("--devices", "a positive count like 2, a comma list of device indices like 0,1 (one index: 1,), or auto"),
    ("--strategy", "'ddp'"),
    ("--precision", "'bf16-mixed'"),
    ("--accelerator", "'cpu'"),
])
def test_bad_value_lists_what_is_accepted(flag, accepted, capsys):
    with pytest.raises(SystemExit):
        main(["run", flag, "bogus", str(SCRIPT)])
    assert accepted in capsys.readouterr().err


def test_from_a_shell_bad_input_has_no_traceback():
    for argv in (["run"], ["run", "--devices", "0", str(SCRIPT)]):
        done = subprocess.run([sys.executable, "-m", "fabric_kit", *argv], cwd=CLI_TESTS, env=clean_environment(),
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr


def test_cli_modules_import_no_torch():
    """`import fabric_kit` may pull torch in; the CLI itself must add nothing heavy on top."""
    code = ("import sys, fabric_kit; before = set(sys.modules); import fabric_kit.cli.main; "
            "print(sorted(m for m in set(sys.modules) - before if not m.startswith('fabric_kit')))")
    done = subprocess.run([sys.executable, "-c", code], env=clean_environment(), capture_output=True, text=True,
                          check=True, timeout=60)
    assert "torch" not in done.stdout, done.stdout


def test_console_script_is_ours():
    from importlib.metadata import entry_points

    assert "fabric_kit.cli.main:main" in {e.value for e in entry_points(group="console_scripts", name="fabric")}


def test_everything_after_the_script_is_the_scripts():
    args = parse("--devices", "2", SCRIPT, "--devices", "3", "-m", "x", "--help")
    assert args.devices == 2 and not args.module
    assert args.script_args == ["--devices", "3", "-m", "x", "--help"]


def test_one_machine_hosts_the_rendezvous_on_a_free_port():
    arguments = torchrun_arguments(parse("--devices", "2", "--max-restarts", "1", "-m", "pkg.train", "a"), 2)
    port = int(arguments[arguments.index("--master-port") + 1])
    assert arguments == ["--nnodes", "1", "--nproc-per-node", "2", "--max-restarts", "1", "--rdzv-backend", "static",
                         "--node-rank", "0", "--master-addr", "127.0.0.1", "--master-port", str(port),
                         "--shutdown-timeout", "30", "--signals-to-handle", "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1",
                         "--module", "pkg.train", "a"]
    with socket.socket() as probe:
        probe.bind(("", port))  # nobody listens there


def test_several_machines_meet_on_the_agreed_port():
    arguments = torchrun_arguments(parse("--num-nodes", "2", "--node-rank", "1", "--main-address", "10.0.0.1",
                                         SCRIPT), 8)
    assert arguments[:14] == ["--nnodes", "2", "--nproc-per-node", "8", "--max-restarts", "0", "--rdzv-backend",
                              "static", "--node-rank", "1", "--master-addr", "10.0.0.1", "--master-port", "29400"]
    assert torchrun_arguments(parse("--main-port", "1234", SCRIPT), 1)[13] == "1234"


def test_variables_for_the_script(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert script_environment(parse("--devices", "4", "--num-nodes", "2", SCRIPT), 4) == {
        "FABRIC_KIT_DEVICES": "4", "FABRIC_KIT_NUM_NODES": "2", "OMP_NUM_THREADS": "4"}
    assert script_environment(parse("--devices", "1,3", "--precision", "bf16", SCRIPT), 2)["FABRIC_KIT_DEVICES"] \
        == "1,3"
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    assert "OMP_NUM_THREADS" not in script_environment(parse(SCRIPT), 1)
    assert script_environment(parse("--collective-timeout", "90", SCRIPT), 1)["FABRIC_KIT_COLLECTIVE_TIMEOUT"] == "90"


def test_grace_period_is_torchruns_shutdown_timeout():
    arguments = torchrun_arguments(parse("--grace-period", "90", SCRIPT), 1)
    assert arguments[arguments.index("--shutdown-timeout") + 1] == "90"


@given(st.integers(min_value=1, max_value=10**6))
def test_a_count_round_trips(count):
    assert parse_devices(format_devices(count)) == count


@given(st.lists(st.integers(min_value=0, max_value=64), min_size=1, unique=True))
def test_a_list_round_trips(indices):
    assert parse_devices(format_devices(indices)) == indices


@pytest.mark.parametrize("text", ["0", "-1", "", "1.5", "0,0", "-1,2", "a,b", ","])
def test_devices_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError, match="expected a positive count"):
        parse_devices(text)


def test_process_count_per_accelerator(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert processes_per_node("auto", "cuda") == 4
    assert processes_per_node("auto", "auto") == 4
    assert processes_per_node([1, 3], "gpu") == 2
    assert processes_per_node(3, "cpu") == 3
    assert processes_per_node("auto", "cpu") == 1
    assert processes_per_node(2, "mps") == 1
    with pytest.raises(ValueError, match="indices 0..3"):
        processes_per_node([2, 4], "cuda")
    with pytest.raises(ValueError, match="has 4 CUDA"):
        processes_per_node(5, "cuda")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ValueError, match="no CUDA device"):
        processes_per_node(2, "cuda")
