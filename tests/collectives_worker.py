"""The script behind test_collectives.py: TorchCollective in 2 processes it spawns itself (no Fabric), on gloo.

    python collectives_worker.py PORT OUT_DIR

Each rank joins the default group through `TorchCollective.setup`, runs every operation on a group it creates, on a
group rank 0 is not in, and on the default group, tears them down, and writes OUT_DIR/rank<r>.pt.
"""
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fabric_kit.plugins.collectives import TorchCollective


def operations(collective, rank):
    """Every tensor and object operation, each on a fresh tensor that tells the ranks apart."""
    t = lambda *values: torch.tensor(values, dtype=torch.float32)  # noqa: E731
    out = {"rank": collective.rank, "world_size": collective.world_size}
    out["all_reduce_sum"] = collective.all_reduce(t(rank + 1.0), op="sum").tolist()
    out["all_reduce_max"] = collective.all_reduce(t(rank + 1.0), op=dist.ReduceOp.MAX).tolist()
    out["reduce"] = collective.reduce(t(rank + 1.0), dst=0, op="SUM").tolist()
    out["broadcast"] = collective.broadcast(t(rank + 5.0), src=1).tolist()
    out["all_gather"] = [x.tolist() for x in collective.all_gather([t(0.0), t(0.0)], t(rank * 10.0))]
    out["gather"] = [x.tolist() for x in collective.gather(t(rank * 3.0), [t(0.0), t(0.0)], dst=0)]
    out["scatter"] = collective.scatter(t(0.0), [t(7.0), t(8.0)], src=0).tolist()
    out["all_to_all"] = [x.tolist() for x in collective.all_to_all([t(0, 0), t(0, 0)], [t(rank, 0), t(rank, 1)])]
    if rank == 0:
        collective.send(t(42.0), dst=1, tag=3)
        out["recv"] = None
    else:
        out["recv"] = collective.recv(t(0.0), src=0, tag=3).tolist()
    out["all_gather_object"] = collective.all_gather_object([None, None], {"rank": rank})
    out["broadcast_object_list"] = collective.broadcast_object_list([f"from {rank}"], src=0)
    out["gather_object"] = collective.gather_object(rank * 2, [None, None], dst=1)
    out["scatter_object_list"] = collective.scatter_object_list([None], ["a", "b"], src=1)
    collective.barrier()
    collective.monitored_barrier()
    return out


def run(rank, port, out_dir):
    collective = TorchCollective().setup(main_address="127.0.0.1", main_port=port, backend="gloo", world_size=2,
                                         rank=rank)
    result = {"manages": TorchCollective.manages_default_group,
              "exported_left": [n for n in ("MASTER_ADDR", "MASTER_PORT") if n in os.environ]}
    result["world"] = operations(collective, rank)  # no group created: the default one
    own = TorchCollective().create_group(ranks=[0, 1])
    result["own"] = operations(own, rank)
    try:
        own.create_group()
        result["second_group"] = None
    except RuntimeError as error:
        result["second_group"] = str(error)
    lonely = TorchCollective().create_group(ranks=[1])
    result["lonely_member"] = lonely.group != dist.GroupMember.NON_GROUP_MEMBER
    lonely.barrier()  # rank 0 is not in it: returns at once there
    lonely.teardown()
    result["initialized_before_last"] = TorchCollective.is_initialized()  # `own` is still there
    own.teardown()  # the last created group: the default group goes too, since this class made it
    result["initialized_after"] = TorchCollective.is_initialized()
    result["manages_after"] = TorchCollective.manages_default_group
    collective.teardown()  # its group, the default one, is gone already: nothing to do
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))


if __name__ == "__main__":
    for name in ("MASTER_ADDR", "MASTER_PORT"):  # setup exports them, and must take them back
        os.environ.pop(name, None)
    mp.start_processes(run, args=(sys.argv[1], sys.argv[2]), nprocs=2, start_method="spawn")
