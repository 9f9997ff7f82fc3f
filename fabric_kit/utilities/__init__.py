"""Helpers under Lightning's import paths (`lightning.fabric.utilities` and its modules `rank_zero`, `seed`, `data`,
`distributed`, `apply_func`, `cloud_io`, `throughput`), each the one implementation that lives in the fabric_kit
module named after its concept; and fabric_kit's own, which Lightning does not have: `find_executable_batch_size`
(`fabric_kit.out_of_memory`) and `estimate_memory` / `MemoryEstimate` (`fabric_kit.memory_estimate`)."""
from fabric_kit.accelerators.cuda import find_usable_cuda_devices
from fabric_kit.memory_estimate import MemoryEstimate, estimate_memory
from fabric_kit.out_of_memory import find_executable_batch_size
from fabric_kit.utilities.apply_func import apply_to_collection, convert_tensors_to_scalars, move_data_to_device
from fabric_kit.utilities.cloud_io import get_filesystem
from fabric_kit.utilities.data import AttributeDict, has_len, suggested_max_num_workers
from fabric_kit.utilities.distributed import DistributedSamplerWrapper
from fabric_kit.utilities.rank_zero import rank_zero_info, rank_zero_only, rank_zero_warn
from fabric_kit.utilities.seed import seed_everything
from fabric_kit.utilities.throughput import Throughput, ThroughputMonitor, measure_flops

__all__ = ["AttributeDict", "DistributedSamplerWrapper", "MemoryEstimate", "Throughput", "ThroughputMonitor",
           "apply_to_collection", "convert_tensors_to_scalars", "estimate_memory", "find_executable_batch_size",
           "find_usable_cuda_devices", "get_filesystem", "has_len", "measure_flops", "move_data_to_device",
           "rank_zero_info", "rank_zero_only", "rank_zero_warn", "seed_everything", "suggested_max_num_workers"]
