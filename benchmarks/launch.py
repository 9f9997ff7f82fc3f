"""Wall time of ``fabric run --devices 2`` next to Lightning's ``fabric run``, on hello-world all_reduce scripts.

Why: the launcher sits in every edit-and-rerun loop, and a launcher that imports a whole framework before starting
the processes (which import it again) makes each short run pay for it. Target: ours <= 0.5x Lightning's.

Two workloads, 2 CPU processes over gloo:
  plain   the same torch.distributed script under both launchers: the launchers' own cost
  fabric  each library's Fabric hello world, as a user of each would write it (Lightning forbids calling
          fabric.launch() under its CLI, fabric_kit's script calls it so that it also runs under plain python)

Rounds are interleaved (the order alternates each round) so that machine load drifts hit both launchers alike;
one unmeasured warm-up round fills the file cache. Each run must exit 0 or the benchmark stops.

    python benchmarks/launch.py [--rounds 5]

Skipped, with a message, when lightning (or click, which its CLI needs) is not installed.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PLAIN = """
import torch, torch.distributed as dist
dist.init_process_group("gloo")
total = torch.tensor([dist.get_rank() + 1.0])
dist.all_reduce(total)
assert total.item() == 3.0
dist.destroy_process_group()
"""

FABRIC_KIT = """
import torch
from fabric_kit import Fabric
fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp")
fabric.launch()
assert fabric.all_reduce(torch.tensor(float(fabric.global_rank + 1)), reduce_op="sum").item() == 3.0
torch.distributed.destroy_process_group()
"""

LIGHTNING = """
import torch
from lightning.fabric import Fabric
fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp")
assert fabric.all_reduce(torch.tensor(float(fabric.global_rank + 1)), reduce_op="sum").item() == 3.0
torch.distributed.destroy_process_group()
"""


def lightning_command() -> list[str] | None:
    """Lightning's `fabric run` as a module call (its console script is also named `fabric`, and may be ours)."""
    if importlib.util.find_spec("lightning") is None or importlib.util.find_spec("click") is None:
        return None
    command = [sys.executable, "-m", "lightning.fabric.cli"]
    usage = subprocess.run([*command, "--help"], capture_output=True, text=True).stdout
    # Some Lightning versions make the module a command group (`... run SCRIPT`), others the run command itself.
    return [*command, "run"] if "consolidate" in usage else command


def timed(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed with status {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds per launcher and workload")
    rounds = parser.parse_args().rounds

    lightning = lightning_command()
    if lightning is None:
        print("skipped: Lightning's CLI is not installed (pip install lightning click)")
        return
    ours = [sys.executable, "-m", "fabric_kit", "run"]
    flags = ["--accelerator", "cpu", "--devices", "2"]
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FABRIC_KIT_", "LT_", "TORCHELASTIC_", "SLURM_", "OMP_NUM_THREADS"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)

    with tempfile.TemporaryDirectory() as folder:
        scripts = {}
        for name, text in (("plain", PLAIN), ("fabric_kit", FABRIC_KIT), ("lightning", LIGHTNING)):
            scripts[name] = Path(folder) / f"hello_{name}.py"  # not `lightning.py`: it would shadow the package
            scripts[name].write_text(text)
        cases = {
            ("plain", "fabric_kit"): [*ours, *flags, str(scripts["plain"])],
            ("plain", "lightning"): [*lightning, *flags, str(scripts["plain"])],
            ("fabric", "fabric_kit"): [*ours, *flags, str(scripts["fabric_kit"])],
            ("fabric", "lightning"): [*lightning, *flags, str(scripts["lightning"])],
        }
        times: dict[tuple[str, str], list[float]] = {case: [] for case in cases}
        for round_ in range(rounds + 1):
            order = list(cases) if round_ % 2 else list(reversed(cases))
            for case in order:
                elapsed = timed(cases[case], env)
                if round_:  # round 0 warms the file cache
                    times[case].append(elapsed)

    print(f"fabric run --devices 2, 2 CPU processes (gloo), median of {rounds} interleaved rounds, seconds")
    print(f"{'workload':<10}{'fabric_kit':>12}{'lightning':>12}{'ratio':>8}")
    for workload in ("plain", "fabric"):
        kit = statistics.median(times[(workload, "fabric_kit")])
        light = statistics.median(times[(workload, "lightning")])
        print(f"{workload:<10}{kit:>12.2f}{light:>12.2f}{kit / light:>7.2f}x")


if __name__ == "__main__":
    main()
