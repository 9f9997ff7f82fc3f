"""`strategy="ddp"` from a plain `python train.py`: this process becomes rank 0 and re-runs the same command line
for ranks 1..N-1 with the rank in the environment. A watchdog ends the whole group as soon as one process fails,
so a crash never leaves the others hanging in a collective."""
from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from fabric_kit.environments import ClusterEnvironment
from fabric_kit.strategies.launchers.launcher import Launcher


class SubprocessScriptLauncher(Launcher):
    reruns_script = True

    def __init__(self, environment: ClusterEnvironment, num_processes: int, num_nodes: int) -> None:
        self.environment = environment
        self.num_processes = num_processes
        self.num_nodes = num_nodes
        self.children: list[subprocess.Popen[bytes]] = []

    @property
    def is_interactive_compatible(self) -> bool:
        return False

    def launch(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.environment.creates_processes_externally:
            return function(*args, **kwargs)
        self._start_children()
        result = function(*args, **kwargs)
        # Registered after `function` joined the process group, so at exit it runs before the group's own teardown:
        # this process hosts the group's store, and closing it under children still tearing down aborts them.
        atexit.register(_wait_for_children, self.children)
        return result

    def _start_children(self) -> None:
        env = os.environ
        env["MASTER_ADDR"] = self.environment.main_address
        env["MASTER_PORT"] = str(self.environment.main_port)
        env["NODE_RANK"] = str(self.environment.node_rank())
        env["WORLD_SIZE"] = str(self.num_processes * self.num_nodes)
        env["LOCAL_WORLD_SIZE"] = str(self.num_processes)
        command = _rerun_command()
        for local_rank in range(1, self.num_processes):
            child_env = {**env, "LOCAL_RANK": str(local_rank),
                         "RANK": str(self.environment.node_rank() * self.num_processes + local_rank)}
            self.children.append(subprocess.Popen(command, env=child_env))
        # This process is local rank 0 of its node.
        env["LOCAL_RANK"] = "0"
        env["RANK"] = str(self.environment.node_rank() * self.num_processes)
        threading.Thread(target=_watch_children, args=(self.children,), daemon=True).start()


def _rerun_command() -> list[str]:
    """The command line that started this process, so children run the same script or module."""
    main = sys.modules["__main__"]
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:  # started with `python -m package.module`
        module = spec.name[: -len(".__main__")] if spec.name.endswith(".__main__") else spec.name
        return [sys.executable, "-m", module, *sys.argv[1:]]
    if not sys.argv or not sys.argv[0] or sys.argv[0] == "-c":
        raise RuntimeError("strategy 'ddp' re-runs the script for the other ranks, but this process was not "
                           "started from a script; use strategy='ddp_spawn' (or 'ddp_notebook' in a notebook)")
    return [sys.executable, os.path.abspath(sys.argv[0]), *sys.argv[1:]]


def _watch_children(children: list[subprocess.Popen[bytes]]) -> None:
    """When a child fails, stop the others and this process: peers would otherwise wait forever in a collective."""
    while True:
        for child in children:
            code = child.poll()
            if code is not None and code != 0:
                for other in children:
                    if other.poll() is None:
                        other.kill()
                print(f"fabric_kit: a child process (pid {child.pid}) exited with code {code}; stopping the job",
                      file=sys.stderr, flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
        if all(child.poll() is not None for child in children):
            return
        time.sleep(0.5)


def _wait_for_children(children: list[subprocess.Popen[bytes]]) -> None:
    """Rank 0 outlives its children, so the job's exit status (and a shell waiting on it) covers every rank."""
    codes = [child.wait() for child in children]
    failed = next((code for code in codes if code != 0), 0)
    if failed:
        os._exit(failed)
