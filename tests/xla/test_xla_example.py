"""The XLA example runs as written (XLA lane only: needs real torch_xla, on XLA's CPU backend)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch_xla", reason="torch_xla is not installed: the XLA lane is `make test-xla`")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fabric" / "xla_regression.py"


def test_example_trains_on_one_xla_device():
    done = subprocess.run([sys.executable, str(EXAMPLE), "--epochs", "2"], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PJRT_DEVICE": "CPU"})
    assert done.returncode == 0, done.stderr
    assert "epoch 1: loss" in done.stdout
