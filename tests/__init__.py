"""fabric_kit's test suite, as a package so that tests, worker scripts and the processes tests start all import
shared code the same way: `from tests.helpers.loops import Regression`, or a worker script's pieces with
`from tests.strategies.fsdp_worker import TinyTransformer`.

pytest puts the repository root (this package's parent) on sys.path; a process a test starts finds the package
because its environment comes from `tests.helpers.processes.process_environment`, which puts the root first on
PYTHONPATH (`run_ranks` in conftest.py and the other runners use it), and `fabric run` and the strategies' launchers
pass that on to every rank.
"""
