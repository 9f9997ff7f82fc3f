"""fabric_kit's test suite, as a package so that tests, worker scripts and the processes tests start all import
shared code the same way: `from tests.helpers.loops import Regression`, or a worker script's pieces with
`from tests.strategies.fsdp_worker import TinyTransformer`.

pytest puts the repository root (this package's parent) on sys.path; a process a test starts finds the package
because the test puts the root on its PYTHONPATH (`run_ranks` in conftest.py, tests.helpers.cli_processes and
tests.helpers.checkpoint_runs do), which `fabric run` and the strategies' launchers pass on to every rank.
"""
