import os
import socket

import pytest

from fabric_kit.environments import LocalEnvironment


def test_defaults_outside_any_launcher():
    env = LocalEnvironment()
    assert LocalEnvironment.detect()
    assert not env.creates_processes_externally
    assert env.main_address == "127.0.0.1"
    assert (env.world_size(), env.global_rank(), env.local_rank(), env.node_rank()) == (1, 0, 0, 0)


def test_child_reads_what_our_launcher_exported(setenv):
    setenv(MASTER_ADDR="10.0.0.1", MASTER_PORT=1234, WORLD_SIZE=4, RANK=3, LOCAL_RANK=1, NODE_RANK=1)
    env = LocalEnvironment()
    assert env.creates_processes_externally
    assert env.main_address == "10.0.0.1"
    assert env.main_port == 1234
    assert (env.world_size(), env.global_rank(), env.local_rank(), env.node_rank()) == (4, 3, 1, 1)


def test_setters_store_values():
    env = LocalEnvironment()
    env.set_world_size(8)
    env.set_global_rank(5)
    assert (env.world_size(), env.global_rank()) == (8, 5)


def test_free_port_is_picked_once_exported_and_removed_on_teardown():
    env = LocalEnvironment()
    port = env.main_port
    assert os.environ["MASTER_PORT"] == str(port)
    assert env.main_port == port
    assert LocalEnvironment().main_port == port  # a second reader (e.g. a child) agrees
    with socket.socket() as sock:
        sock.bind(("", port))  # it was free
    env.teardown()
    assert "MASTER_PORT" not in os.environ


def test_teardown_keeps_a_port_it_did_not_export(setenv):
    setenv(MASTER_PORT=4321)
    env = LocalEnvironment()
    assert env.main_port == 4321
    env.teardown()
    assert os.environ["MASTER_PORT"] == "4321"


def test_malformed_variable_names_itself(setenv):
    setenv(WORLD_SIZE="two")
    with pytest.raises(ValueError, match=r"WORLD_SIZE='two'.*whole number"):
        LocalEnvironment()


def test_node_rank_from_node_rank_then_group_rank(setenv, monkeypatch):
    assert LocalEnvironment().node_rank() == 0
    setenv(GROUP_RANK=2)
    assert LocalEnvironment().node_rank() == 2
    setenv(NODE_RANK=1)
    assert LocalEnvironment().node_rank() == 1
