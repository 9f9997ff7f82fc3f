"""The script every launch mode must run unchanged: 2 CPU processes, one all_reduce.

Each rank writes what it saw to ``<out_dir>/rank<N>.json``. ``--fail-rank R`` makes rank R raise after joining the
process group; ``--fail-once MARKER`` makes rank 1 fail on the first run only (MARKER records that it did).
``--devices`` and ``--num-nodes`` are the script's own, given to ``Fabric(...)`` (and named like the launcher's flags
on purpose: everything after the script path must reach the script untouched).
"""
import argparse
import json
import os
from pathlib import Path

import torch

from fabric_kit import Fabric


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--fail-rank", type=int)
    parser.add_argument("--fail-once", type=Path)
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--num-nodes", type=int, default=1)
    args = parser.parse_args()
    with open(args.out_dir / "pids", "a") as pids:
        pids.write(f"{os.getpid()}\n")

    fabric = Fabric(accelerator="cpu", devices=args.devices, num_nodes=args.num_nodes, strategy="ddp")
    fabric.launch()
    if fabric.global_rank == args.fail_rank:
        raise RuntimeError(f"rank {fabric.global_rank} fails on purpose")
    if args.fail_once is not None and fabric.global_rank == 1 and not args.fail_once.exists():
        args.fail_once.touch()
        raise RuntimeError("rank 1 fails on the first run only")
    total = fabric.all_reduce(torch.tensor(float(fabric.global_rank + 1)), reduce_op="sum")
    seen = {
        "rank": fabric.global_rank,
        "world_size": fabric.world_size,
        "sum": total.item(),
        "restart": os.environ.get("TORCHELASTIC_RESTART_COUNT"),
        "environment": {k: v for k, v in os.environ.items() if k.startswith("FABRIC_KIT_") or k == "OMP_NUM_THREADS"},
    }
    (args.out_dir / f"rank{fabric.global_rank}.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    main()
