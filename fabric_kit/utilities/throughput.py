"""Lightning's `lightning.fabric.utilities.throughput`; defined in `fabric_kit.throughput`."""
from fabric_kit.throughput import Throughput, ThroughputMonitor, get_available_flops, measure_flops

__all__ = ["Throughput", "ThroughputMonitor", "get_available_flops", "measure_flops"]
