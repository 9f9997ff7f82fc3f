"""Lightning-style programs (programs/, written here with `lightning` imports) run once with Lightning and once with
only their import prefixes rewritten to fabric_kit / loops, and print the same results: names the same, numbers
within 1e-6. Each flavour runs every program in one process, both flavours at once."""
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.compat.runner import rewrite
from tests.helpers.processes import ROOT, process_environment

PROGRAMS = sorted((Path(__file__).parent / "programs").glob("*.py"))
TOLERANCE = 1e-6
TIMEOUT = 600


def run_all(env_extra=None, programs=PROGRAMS):
    """{flavour: {program: output lines}}; a program that raised has its traceback as its lines."""
    env = process_environment(**(env_extra or {}))
    started = {flavour: subprocess.Popen([sys.executable, "-m", "tests.compat.runner", flavour, *map(str, programs)],
                                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for flavour in ("lightning", "ours")}
    results = {}
    for flavour, process in started.items():
        out, err = process.communicate(timeout=TIMEOUT)
        assert process.returncode == 0, f"{flavour} runner failed:\n{err[-3000:]}"
        results[flavour] = parse(out)
    return results


def parse(out):
    programs, current = {}, None
    for line in out.splitlines():
        if line.startswith("### "):
            current = line[4:]
            programs[current] = []
        elif current is not None:
            programs[current].append(line)
    return programs


def same(expected_line, line):
    """The same words, and numbers equal within TOLERANCE."""
    theirs, ours = expected_line.split(), line.split()
    if len(theirs) != len(ours):
        return False
    for a, b in zip(theirs, ours, strict=True):
        try:
            if not math.isclose(float(a), float(b), rel_tol=TOLERANCE, abs_tol=TOLERANCE):
                return False
        except ValueError:
            if a != b:
                return False
    return True


def assert_same(results, name):
    for flavour, programs in results.items():
        assert f"{name} FAILED" not in programs, f"{name} raised under {flavour}:\n" + "\n".join(
            programs[f"{name} FAILED"])
        assert programs.get(name), f"{name} printed no results under {flavour}"
    theirs, ours = results["lightning"][name], results["ours"][name]
    mismatches = [(a, b) for a, b in zip(theirs, ours, strict=False) if not same(a, b)]
    assert len(theirs) == len(ours) and not mismatches, (
        f"{name}:\nLightning: {theirs}\nours:      {ours}\nfirst differences: {mismatches[:3]}")


@pytest.fixture(scope="module")
def results():
    return run_all()


@pytest.mark.parametrize("program", [p.stem for p in PROGRAMS])
def test_program_prints_what_lightning_prints(results, program):
    assert_same(results, program)


def test_rank_zero_only_at_import_on_local_rank_three():
    """Only LOCAL_RANK=3 set (Lightning reads it as the rank): neither decorated function runs."""
    program = Path(__file__).parent / "programs" / "rank_zero_at_import.py"
    results = run_all({"LOCAL_RANK": "3"}, [program])
    assert_same(results, program.stem)
    assert results["ours"][program.stem] == ["@@ ranks 3 3"]


def test_rewrite_moves_only_import_paths():
    source = ("import lightning as L\nfrom lightning.fabric.strategies import FSDPStrategy\n"
              "from lightning.pytorch.demos import BoringModel\nimport lightning.pytorch as pl\n"
              "from lightning_utilities.core.rank_zero import rank_zero_only\nfrom pytorch_lightning import Trainer\n"
              "print('lightning.fabric stays in strings')\n")
    assert rewrite(source) == ("import loops as L\nfrom fabric_kit.strategies import FSDPStrategy\n"
                               "from loops.demos import BoringModel\nimport loops as pl\n"
                               "from lightning_utilities.core.rank_zero import rank_zero_only\n"
                               "from loops import Trainer\nprint('lightning.fabric stays in strings')\n")


def test_a_mismatch_is_found():
    assert same("@@ loss 1.0000001", "@@ loss 1.0000002")
    assert not same("@@ loss 1.00001", "@@ loss 1.00002")
    assert not same("@@ ranks 0 0", "@@ ranks 0 1") and not same("@@ a b", "@@ a")
