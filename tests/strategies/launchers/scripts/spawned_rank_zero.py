"""Two ranks started by `ddp_spawn` save the rank each `rank_zero_only` sees. lightning_utilities is imported before
the rank is known (each spawned rank imports this script first), as a program's utils module would be.

    python spawned_rank_zero.py OUT_DIR
"""
import sys
from pathlib import Path

import lightning_utilities.core.rank_zero as utilities
import torch

from fabric_kit import Fabric
from fabric_kit.utilities import rank_zero_only


def main(fabric, out_dir):
    ran = []
    utilities.rank_zero_only(lambda: ran.append("theirs"))()
    rank_zero_only(lambda: ran.append("ours"))()
    torch.save({"theirs": utilities.rank_zero_only.rank, "ours": rank_zero_only.rank, "ran": ran},
               Path(out_dir) / f"rank{fabric.global_rank}.pt")


if __name__ == "__main__":
    Fabric(accelerator="cpu", devices=2, strategy="ddp_spawn").launch(main, sys.argv[1])
