"""The script behind test_rejoin.py: two Fabric DDP sessions one after the other in the same 2 processes, each
torn down before the next joins, with rank 0 the slower to tear down (so rank 1 reaches the next rendezvous while
rank 0's previous store still serves).

    python rejoin_worker.py OUT_DIR
"""
import os
import sys
import time

import torch

from fabric_kit import Fabric


def main(out_dir):
    sums = []
    for _ in range(2):
        fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp")
        fabric.launch()
        sums.append(fabric.all_reduce(torch.tensor(fabric.global_rank + 1.0), reduce_op="sum").item())
        fabric.barrier()
        if fabric.global_rank == 0:
            time.sleep(1.0)
        fabric.strategy.teardown()
    torch.save({"sums": sums}, os.path.join(out_dir, f"rank{fabric.global_rank}.pt"))


if __name__ == "__main__":
    main(sys.argv[1])
