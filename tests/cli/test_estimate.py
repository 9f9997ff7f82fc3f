"""`fabric estimate`: the console command prints what `estimate_memory` computes; bad input reads as one line."""
import subprocess
import sys

import pytest

from fabric_kit.cli.main import main
from fabric_kit.memory_estimate import estimate_memory, format_bytes
from tests.helpers.memory_models import Block, tiny_transformer, transformer_input
from tests.helpers.processes import ROOT, process_environment

MODELS = "tests.helpers.memory_models"


def test_the_command_prints_the_estimate_of_the_python_api():
    """Through the shell, as a user runs it (the model module found from the current directory)."""
    args = [f"{MODELS}:tiny_transformer", "--strategy", "fsdp", "--devices", "2", "--precision", "bf16-true",
            "--sample-input", f"{MODELS}:transformer_input", "--activation-checkpointing", "Block",
            "--memory", "1GiB"]
    proc = subprocess.run([sys.executable, "-m", "fabric_kit", "estimate", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=process_environment())
    assert proc.returncode == 0, proc.stderr
    expected = estimate_memory(tiny_transformer, strategy="fsdp", devices=2, precision="bf16-true",
                               sample_input=transformer_input, activation_checkpointing={Block}, memory="1GiB")
    assert proc.stdout.strip() == f"{MODELS}:tiny_transformer: {expected.format()}"
    assert f"largest micro-batch in 1.00 GiB: {expected.max_batch_size}" in proc.stdout
    assert format_bytes(expected.parameters) in proc.stdout and "checkpointed" in proc.stdout


@pytest.mark.parametrize("argv, named", [
    ([f"{MODELS}:missing"], "cannot load 'tests.helpers.memory_models:missing'"),
    (["no_colon"], "'no_colon' is not MODULE:NAME"),
    ([f"{MODELS}:mlp", "--memory", "lots"], "memory='lots' is not a memory size"),
    ([f"{MODELS}:mlp", "--optimizer", "lion"], "invalid choice: 'lion'"),
    ([f"{MODELS}:mlp", "--devices", "2", "--rank", "5"], "rank=5 is not a rank of 2"),
])
def test_bad_input_is_one_line_with_status_2(argv, named, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["estimate", *argv])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert named in error and len(error.strip().splitlines()) == 1


def test_a_model_that_fails_on_the_meta_device_is_status_1(capsys):
    assert main(["estimate", f"{MODELS}:mlp", "--sample-input", f"{MODELS}:transformer_input"]) == 1
    error = capsys.readouterr().err
    assert "on the meta device failed: RuntimeError" in error and len(error.strip().splitlines()) == 1
