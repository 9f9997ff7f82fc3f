"""`strategy="ddp"` from a plain `python train.py`: this process becomes rank 0 and re-runs the same command line
for ranks 1..N-1 with the rank in the environment. It supervises them as torchrun does:
- a rank that fails (non-zero exit, or killed by a signal) stops the job: the others get SIGTERM, a few seconds,
  then SIGKILL, and this process exits with that rank's status (128 + signal for a killed one); the rank's
  traceback is already on the shared stderr;
- when rank 0 itself raises, the exception hook notes it, and at exit the other ranks are stopped in the same way
  instead of waited for; when its script ends, they are waited for (the collective watchdog ends any that waits
  for rank 0 in a collective), and the job's status is rank 0's own unless another rank fails by itself;
- SIGTERM / SIGINT to this process are forwarded to every rank, which then get the grace period
  (FABRIC_KIT_GRACE_PERIOD, 30 s) before SIGKILL; the job then exits with 128 + the signal;
- a rank ends by itself when this process is gone (SIGKILLed), so none is ever left behind.
"""
from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from fabric_kit import signals
from fabric_kit.environments import ClusterEnvironment
from fabric_kit.strategies.launchers.launcher import Launcher
from fabric_kit.strategies.launchers.processes import (
    FAILURE_GRACE_PERIOD,
    LAUNCHER_PID_VARIABLE,
    describe,
    end_with_launcher,
    exit_status,
    grace_period,
    root_cause,
)
from fabric_kit.watchdog import TIMEOUT_STATUS


class SubprocessScriptLauncher(Launcher):
    reruns_script = True

    def __init__(self, environment: ClusterEnvironment, num_processes: int, num_nodes: int) -> None:
        self.environment = environment
        self.num_processes = num_processes
        self.num_nodes = num_nodes
        self.children: list[subprocess.Popen[bytes]] = []
        self._ending = False  # rank 0 decides how the job ends: it raised, was signalled, or is stopping the ranks
        self._rank_zero_raised = False
        self._signal: int | None = None  # the first signal forwarded to the children
        self._deadline = 0.0  # when the children's grace period after that signal ends

    @property
    def is_interactive_compatible(self) -> bool:
        return False

    def launch(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.environment.creates_processes_externally:
            end_with_launcher(self.environment.global_rank())
            return function(*args, **kwargs)
        self._start_children()
        signals.forward_to(self._forward)
        _chain_excepthook(self._note_exception)
        threading.Thread(target=self._watch_children, name="fabric_kit children watch", daemon=True).start()
        try:
            result = function(*args, **kwargs)
        except BaseException:
            self._stop_children()
            raise
        # Registered after `function` joined the process group, so at exit it runs before the group's own teardown:
        # this process hosts the group's store, and closing it under children still tearing down aborts them.
        atexit.register(self._at_exit)
        return result

    def _start_children(self) -> None:
        env = os.environ
        env["MASTER_ADDR"] = self.environment.main_address
        env["MASTER_PORT"] = str(self.environment.main_port)
        env["NODE_RANK"] = str(self.environment.node_rank())
        env["WORLD_SIZE"] = str(self.num_processes * self.num_nodes)
        command = _rerun_command()
        for local_rank in range(1, self.num_processes):
            # LOCAL_WORLD_SIZE tells the children's Fabric how many ranks share the node; this process needs none,
            # so it is not left in the environment of the program that launched the job.
            child_env = {**env, "LOCAL_RANK": str(local_rank), LAUNCHER_PID_VARIABLE: str(os.getpid()),
                         "RANK": str(self._rank_of(local_rank)), "LOCAL_WORLD_SIZE": str(self.num_processes)}
            # A session of their own: a terminal's Ctrl-C reaches this process only, which forwards it once.
            self.children.append(subprocess.Popen(command, env=child_env, start_new_session=True))
        # This process is local rank 0 of its node.
        env["LOCAL_RANK"] = "0"
        env["RANK"] = str(self._rank_of(0))

    def _rank_of(self, local_rank: int) -> int:
        return self.environment.node_rank() * self.num_processes + local_rank

    # -- supervision ----------------------------------------------------------------------------------------------
    def _watch_children(self) -> None:
        """The first child to fail ends the job with its status, unless rank 0's own end (its script finished, it
        raised, or a signal arrived) already decides how the job ends."""
        while any(child.poll() is None for child in self.children):
            if self._failed_children() and not self._ending and threading.main_thread().is_alive():
                self._end_job(self._failed_children(within=FAILURE_GRACE_PERIOD))
            time.sleep(0.1)

    def _failed_children(self, within: float = 0.0) -> dict[int, int]:
        """The return codes of the children that failed, by rank, once all have ended or `within` seconds passed:
        after one failure the others may be failing too, as a consequence or on their way out, and their statuses
        tell the cause."""
        deadline = time.monotonic() + within
        while True:
            codes = {self._rank_of(local_rank): child.poll() for local_rank, child in enumerate(self.children, 1)}
            if None not in codes.values() or time.monotonic() >= deadline:
                return {rank: code for rank, code in codes.items() if code}
            time.sleep(0.05)

    def _end_job(self, failed: dict[int, int]) -> None:
        """Stop every rank after the failure of one of `failed` (codes by rank) and end with its status."""
        rank = root_cause(failed)
        child = self.children[rank - self._rank_of(1)]
        print(f"fabric_kit: rank {rank} (pid {child.pid}) {describe(failed[rank])}; stopping the job",
              file=sys.stderr, flush=True)
        self._stop_children()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_status(failed[rank]))

    def _forward(self, number: int) -> None:
        """On the signal forwarding thread: pass the signal on to every child; SIGKILL them when the grace period
        ends."""
        if self._signal is None:
            self._ending = True
            self._signal = number
            self._deadline = time.monotonic() + grace_period()
            threading.Thread(target=self._end_grace_period, name="fabric_kit grace period", daemon=True).start()
        for child in self.children:
            if child.poll() is None:
                child.send_signal(number)

    def _end_grace_period(self) -> None:
        time.sleep(max(0.0, self._deadline - time.monotonic()))
        # Said before any rank is killed: rank 0, waiting in a collective with a killed rank, fails at once.
        running = [self._rank_of(local_rank) for local_rank, child in enumerate(self.children, 1)
                   if child.poll() is None]
        if threading.main_thread().is_alive():
            running.insert(0, self._rank_of(0))
        if running:
            print(f"fabric_kit: rank {', '.join(map(str, running))} did not end within the grace period after "
                  f"{signal.Signals(self._signal or signal.SIGTERM).name}; stopping the job",
                  file=sys.stderr, flush=True)
        _wait_or_kill(self.children, self._deadline)
        if threading.main_thread().is_alive():
            os._exit(exit_status(-(self._signal or signal.SIGTERM)))

    def _note_exception(self) -> None:
        self._ending = self._rank_zero_raised = True

    def _at_exit(self) -> None:
        self._ending = True
        signals.stopping_signal()  # a signal that ends rank 0 has reached the children
        if self._signal is not None:
            _wait_or_kill(self.children, self._deadline)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(exit_status(-self._signal))
        if self._rank_zero_raised:
            # A child that fails (it may still be on its way out, having closed its connections) likely caused rank
            # 0's error: rank 0's collective lost that peer.
            failed = self._failed_by_themselves(within=FAILURE_GRACE_PERIOD)
            if failed:
                self._end_job(failed)
            self._stop_children()
            return
        # The script ended: rank 0's status stands, unless another rank fails by itself.
        for child in self.children:
            child.wait()
        failed = self._failed_by_themselves()
        if failed:
            self._end_job(failed)

    def _failed_by_themselves(self, within: float = 0.0) -> dict[int, int]:
        """`_failed_children` once rank 0 is ending, less those the watchdog ended because they waited for rank 0
        in a collective it will never join: a consequence of rank 0's end, whose status is the job's."""
        return {rank: code for rank, code in self._failed_children(within).items() if code != TIMEOUT_STATUS}

    def _stop_children(self) -> None:
        """SIGTERM to every child still running, a few seconds for them to end, then SIGKILL."""
        self._ending = True
        for child in self.children:
            if child.poll() is None:
                child.terminate()
        _wait_or_kill(self.children, time.monotonic() + FAILURE_GRACE_PERIOD)


def _wait_or_kill(children: list[subprocess.Popen[bytes]], deadline: float) -> None:
    """Wait for every child until `deadline`, then SIGKILL those still running (and reap them)."""
    for child in children:
        try:
            child.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _chain_excepthook(note: Callable[[], None]) -> None:
    """Call `note()` before the current exception hook prints an uncaught exception of the main thread."""
    previous = sys.excepthook

    def hook(kind: type[BaseException], value: BaseException, traceback: TracebackType | None) -> None:
        note()
        previous(kind, value, traceback)

    sys.excepthook = hook


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
