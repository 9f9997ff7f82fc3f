"""Runs an example as its docstring says, from the repository root, in a fresh interpreter."""
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_example(*args, timeout=180):
    """`python *args` (use "-m", "fabric_kit", "run", ... for `fabric run`); returns stdout, failing with the
    example's output when it exits non-zero. Call from a test that uses the `clean_env` fixture."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"exit status {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def number_after(label, text):
    """The number printed right after `label` (the last occurrence)."""
    found = re.findall(re.escape(label) + r"\s*([-+0-9.]+)", text)
    assert found, f"{label!r} not in the output:\n{text}"
    return float(found[-1])
