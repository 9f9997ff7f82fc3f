"""What a pipelined model's sharded checkpoint needs beyond the other layouts': every rank's optimizer lists only
its own stages' parameters in its param groups, while DCP keeps one copy of those lists (rank 0's). Written whole,
in the model's order, they load into any layout and consolidate into torch's index-keyed state."""
from __future__ import annotations

from typing import Any

import torch.distributed as dist


def whole_param_groups(state_dict: dict[str, Any], stage_of: dict[str, int], group: dist.ProcessGroup
                       ) -> dict[str, Any]:
    """`state_dict` (an optimizer's, keyed by parameter name) with each param group listing the parameters of
    every stage over the pipeline `group`, ordered by stage (`stage_of`: this rank's names -> their stage index)."""
    local = [[(stage_of[name], position, name) for position, name in enumerate(param_group["params"])]
             for param_group in state_dict["param_groups"]]
    ranks: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(ranks, local, group=group)
    groups = [{**param_group, "params": [name for *_, name in sorted(entry for rank in ranks for entry in rank[i])]}
              for i, param_group in enumerate(state_dict["param_groups"])]
    return type(state_dict)({**state_dict, "param_groups": groups})
