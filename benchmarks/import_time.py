"""Import cost above `import torch`, measured in fresh interpreters, interleaved, medians.

    python benchmarks/import_time.py [--rounds 7]
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import time

BASELINE = "import torch"
CANDIDATES = {
    "fabric_kit": "import torch, fabric_kit",
    "loops": "import torch, loops",
    "lightning.fabric": "import torch, lightning.fabric",
    "lightning (Trainer)": "import torch, lightning",
}
TARGET_SECONDS = 0.3


def wall(statement: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", statement], check=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    present = {name: stmt for name, stmt in CANDIDATES.items()
               if importlib.util.find_spec(name.split(" ")[0].split(".")[0]) is not None}
    wall(BASELINE)  # warm the file cache
    samples: dict[str, list[float]] = {name: [] for name in ("torch", *present)}
    for _ in range(args.rounds):
        samples["torch"].append(wall(BASELINE))
        for name, statement in present.items():
            samples[name].append(wall(statement))
    base = statistics.median(samples["torch"])
    print(f"{'import':<22} {'median s':>9} {'above torch s':>14}")
    for name, values in samples.items():
        median = statistics.median(values)
        print(f"{name:<22} {median:>9.3f} {median - base:>+14.3f}")
    ours = statistics.median(samples["fabric_kit"]) - base
    print(f"\nfabric_kit above torch: {ours:.3f} s (target <= {TARGET_SECONDS} s)")


if __name__ == "__main__":
    main()
