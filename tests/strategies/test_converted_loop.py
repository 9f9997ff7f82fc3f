"""One script, every strategy: tests/strategies/converted_loop.py (`model, optimizer = fabric.setup(model,
optimizer)`, `fabric.clip_gradients(..., max_norm=...)`, a checkpoint round trip) runs unchanged, only
ACC_STRATEGY differing, in one process and on 2 CPU processes under each launcher. On 2 processes every strategy
trains the same numbers (ZeRO and FSDP reduce in another order than DDP: float32 rounding only). The plain launches
of ddp and fsdp share one set of processes, as do DeepSpeed's two stages (GROUPS), each strategy checked on its own."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.processes import ROOT, free_port

SCRIPT = Path(__file__).with_name("converted_loop.py")
LAUNCHES = {
    "single_device": ("single_device", []),
    "ddp": ("ddp", []),
    "ddp_torchrun": ("ddp", ["-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                             "--master-port", "{port}"]),
    "ddp_fabric_run": ("ddp", ["-m", "fabric_kit", "run", "--devices", "2"]),
    "fsdp": ("fsdp", []),
    "deepspeed_stage_2": ("deepspeed_stage_2", []),
    "deepspeed_stage_3": ("deepspeed_stage_3", []),
}
GROUPS = [["ddp", "fsdp"], ["deepspeed_stage_2", "deepspeed_stage_3"]]
"""Launches of the same command that share its processes: ACC_STRATEGY names their strategies, run in turn."""
TOLERANCE = 1e-4
needs_deepspeed = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="DeepSpeed is not installed")


@pytest.fixture(scope="module")
def runs(job_environment, tmp_path_factory):
    """`runs(launch)`: the JSON lines rank 0 printed for the launch's strategy in the "train" run and in the
    "resume" rerun; each launch's group runs once."""
    done = {}

    def get(launch):
        if launch not in done:
            group = next((group for group in GROUPS if launch in group), [launch])
            strategies = {LAUNCHES[name][0]: name for name in group}
            prefix = LAUNCHES[launch][1]
            out = tmp_path_factory.mktemp(launch)
            results = {name: {} for name in group}
            for phase in ("train", "resume"):
                port = str(free_port())
                args = [port if arg == "{port}" else arg for arg in prefix]
                proc = subprocess.run([sys.executable, *args, str(SCRIPT), str(out), phase], cwd=ROOT,
                                      capture_output=True, text=True, timeout=600,
                                      env=job_environment(ACC_STRATEGY=",".join(strategies)))
                assert proc.returncode == 0, proc.stdout + proc.stderr
                lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
                assert sorted(line["strategy"] for line in lines) == sorted(strategies), proc.stdout
                for line in lines:
                    results[strategies[line["strategy"]]][phase] = line
            done.update(results)
        return done[launch]

    return get


def _launches():
    return [pytest.param(name, marks=needs_deepspeed) if name.startswith("deepspeed") else name for name in LAUNCHES]


@pytest.mark.parametrize("launch", _launches())
def test_runs_unchanged_and_resumes(runs, launch):
    train, resume = runs(launch)["train"], runs(launch)["resume"]
    assert train["world_size"] == resume["world_size"] == (1 if launch == "single_device" else 2)
    assert (train["first_step"], resume["first_step"]) == (0, 3)
    assert resume["losses"] == pytest.approx(train["losses"][3:], abs=1e-6)
    assert max(train["norms"]) > 0.5  # clip_gradients(max_norm=0.5) had something to clip


@pytest.mark.parametrize("launch", [name for name in _launches() if name not in ("single_device", "ddp")])
def test_two_processes_train_alike_under_every_strategy(runs, launch):
    reference, result = runs("ddp")["train"], runs(launch)["train"]
    assert result["norms"] == pytest.approx(reference["norms"], abs=TOLERANCE)
    assert result["losses"] == pytest.approx(reference["losses"], abs=TOLERANCE)
