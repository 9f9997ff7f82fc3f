"""Throughput for raw loops: samples, items and FLOPs per second over a rolling window, the model FLOPs utilisation
(MFU) against the device's peak, and `measure_flops`, which counts a model's FLOPs without running it for real."""
from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.flop_counter import FlopCounterMode

if TYPE_CHECKING:
    from fabric_kit.fabric import Fabric
    from fabric_kit.precision import Precision

FLOAT8 = torch.float8_e4m3fn

# Dense (no sparsity) peak FLOP/s per GPU from the vendors' data sheets, by compute dtype; "tf32" is float32 matmuls
# on tensor cores (torch.set_float32_matmul_precision("high")). Keys are matched against the lower-cased device name.
CUDA_PEAK_FLOPS: dict[str, dict[torch.dtype | str, float]] = {
    "b200": {torch.float32: 75e12, "tf32": 1.1e15, torch.bfloat16: 2.25e15, torch.float16: 2.25e15, FLOAT8: 4.5e15},
    "h200 nvl": {torch.float32: 60e12, "tf32": 417.5e12, torch.bfloat16: 835.5e12, torch.float16: 835.5e12,
                 FLOAT8: 1.671e15},
    "h200": {torch.float32: 67e12, "tf32": 494.7e12, torch.bfloat16: 989.4e12, torch.float16: 989.4e12,
             FLOAT8: 1.979e15},
    "h100 nvl": {torch.float32: 60e12, "tf32": 417.5e12, torch.bfloat16: 835.5e12, torch.float16: 835.5e12,
                 FLOAT8: 1.671e15},
    "h100 pcie": {torch.float32: 51e12, "tf32": 378e12, torch.bfloat16: 756e12, torch.float16: 756e12,
                  FLOAT8: 1.513e15},
    "h100": {torch.float32: 67e12, "tf32": 494.7e12, torch.bfloat16: 989.4e12, torch.float16: 989.4e12,
             FLOAT8: 1.979e15},
    "a100": {torch.float32: 19.5e12, "tf32": 156e12, torch.bfloat16: 312e12, torch.float16: 312e12},
    "l40s": {torch.float32: 91.6e12, "tf32": 183e12, torch.bfloat16: 362e12, torch.float16: 362e12, FLOAT8: 733e12},
    "l4": {torch.float32: 30.3e12, "tf32": 60e12, torch.bfloat16: 121e12, torch.float16: 121e12, FLOAT8: 242.5e12},
    "a10g": {torch.float32: 31.2e12, "tf32": 62.5e12, torch.bfloat16: 125e12, torch.float16: 125e12},
    "v100": {torch.float32: 15.7e12, torch.float16: 125e12},
    "t4": {torch.float32: 8.1e12, torch.float16: 65e12},
}


def get_available_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """The device's dense peak FLOP/s in `dtype`, or None when unknown (CPUs, GPUs not in `CUDA_PEAK_FLOPS`)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device).lower()
    chip = next((key for key in CUDA_PEAK_FLOPS if key in name), None)  # specific names come before their family
    if chip is None:
        return None
    if dtype is torch.float32 and torch.get_float32_matmul_precision() != "highest":
        return CUDA_PEAK_FLOPS[chip].get("tf32")
    return CUDA_PEAK_FLOPS[chip].get(dtype)


def compute_dtype(precision: Precision) -> torch.dtype:
    """The dtype matmuls run in under a precision: float8 for "fp8", the autocast or parameter dtype of the mixed
    and -true precisions, float32 otherwise."""
    if precision.precision == "fp8":
        return FLOAT8
    dtype = getattr(precision, "dtype", torch.float32)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


def measure_flops(model: torch.nn.Module, forward_fn: Callable[[], torch.Tensor],
                  loss_fn: Callable[[torch.Tensor], torch.Tensor] | None = None) -> int:
    """FLOPs of `forward_fn()` (and, with `loss_fn`, of the backward of `loss_fn(output)`), counted by torch's
    FlopCounterMode. Build the model and inputs on the meta device and nothing is computed or allocated (on CPU
    tensors torch's counter misses the fused attention kernel of `scaled_dot_product_attention`; meta counts it):

        with torch.device("meta"):
            model = GPT(config)
            x = torch.randint(0, 50304, (1, 1024))
        flops_per_batch = measure_flops(model, lambda: model(x), lambda y: y.sum())
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"measure_flops(model={type(model).__name__}): pass the nn.Module that forward_fn runs")
    counter = FlopCounterMode(display=False)
    with counter:
        output = forward_fn()
        if loss_fn is not None:
            loss_fn(output).backward()
    return int(counter.get_total_flops())


class Throughput:
    """Running totals over the last `window_size` updates; the rates appear once the window is full.

    `update` takes totals since the start on this device (`flops`: this batch's FLOPs on this device); `compute`
    returns `time`, `batches`, `samples` (`lengths`), per device `device/batches_per_sec`, `device/samples_per_sec`
    (`device/items_per_sec`, `device/flops_per_sec`, `device/mfu` with a known peak), and with several processes
    the global rates without the `device/` part (assuming every process runs alike)."""

    def __init__(self, available_flops: float | None = None, world_size: int = 1, window_size: int = 100,
                 separator: str = "/") -> None:
        if isinstance(window_size, bool) or not isinstance(window_size, int) or window_size < 2:
            raise ValueError(f"window_size={window_size!r}: pass an int >= 2 (rates need two points)")
        if available_flops is not None and not available_flops > 0:
            raise ValueError(f"available_flops={available_flops!r}: pass the device's peak FLOP/s (> 0) or None")
        self.available_flops, self.world_size, self.separator = available_flops, world_size, separator
        self._window = window_size
        self._time: deque[float] = deque(maxlen=window_size)
        self._batches: deque[int] = deque(maxlen=window_size)
        self._samples: deque[int] = deque(maxlen=window_size)
        self._lengths: deque[int] = deque(maxlen=window_size)
        self._flops: deque[float] = deque(maxlen=window_size)

    def update(self, *, time: float, batches: int, samples: int, lengths: int | None = None,
               flops: float | None = None) -> None:
        if samples < batches:
            raise ValueError(f"samples ({samples}) cannot be fewer than batches ({batches}); pass totals so far")
        if lengths is not None and lengths < samples:
            raise ValueError(f"lengths ({lengths}) cannot be fewer than samples ({samples}); pass totals so far")
        self._time.append(time)
        self._batches.append(batches)
        self._samples.append(samples)
        if lengths is not None:
            self._lengths.append(lengths)
        if flops is not None:
            self._flops.append(flops)

    def compute(self) -> dict[str, float]:
        if not self._time:
            return {}
        metrics: dict[str, float] = {"time": self._time[-1], "batches": self._batches[-1],
                                     "samples": self._samples[-1]}
        if self._lengths:
            metrics["lengths"] = self._lengths[-1]
        if len(self._time) < self._window or self._time[-1] <= self._time[0]:
            return metrics
        elapsed = self._time[-1] - self._time[0]
        rates = {"batches_per_sec": (self._batches[-1] - self._batches[0]) / elapsed,
                 "samples_per_sec": (self._samples[-1] - self._samples[0]) / elapsed}
        if len(self._lengths) == self._window:
            rates["items_per_sec"] = (self._lengths[-1] - self._lengths[0]) / elapsed
        if len(self._flops) == self._window:
            rates["flops_per_sec"] = sum(list(self._flops)[1:]) / elapsed  # the FLOPs done after the first time
        for name, per_device in rates.items():
            metrics[f"device{self.separator}{name}"] = per_device
            if self.world_size > 1:
                metrics[name] = per_device * self.world_size
        if "flops_per_sec" in rates and self.available_flops:
            metrics[f"device{self.separator}mfu"] = rates["flops_per_sec"] / self.available_flops
        return metrics

    def reset(self) -> None:
        for window in (self._time, self._batches, self._samples, self._lengths, self._flops):
            window.clear()


class ThroughputMonitor(Throughput):
    """`Throughput` for a Fabric loop, on global rank 0 (elsewhere `update` does nothing and `compute` returns {}):
    the world size and the peak FLOP/s come from the Fabric's device and precision, or give `available_flops`
    (a GPU this table does not know, a CPU). `compute_and_log(step=None)` logs through `fabric.log_dict`, at
    `step` or at the number of calls so far.

        monitor = ThroughputMonitor(fabric, window_size=50)
        for step, batch in enumerate(loader, 1):
            ...
            monitor.update(time=time.perf_counter() - t0, batches=step, samples=step * batch_size,
                           flops=flops_per_batch)
            monitor.compute_and_log(step=step)
    """

    def __init__(self, fabric: Fabric, available_flops: float | None = None, **kwargs: Any) -> None:
        if available_flops is None:
            available_flops = get_available_flops(fabric.device, compute_dtype(fabric.precision))
        super().__init__(available_flops=available_flops, world_size=fabric.world_size, **kwargs)
        self._fabric = fabric
        self.step = -1

    def update(self, *, time: float, batches: int, samples: int, lengths: int | None = None,
               flops: float | None = None) -> None:
        if self._fabric.is_global_zero:
            super().update(time=time, batches=batches, samples=samples, lengths=lengths, flops=flops)

    def compute(self) -> dict[str, float]:
        return super().compute() if self._fabric.is_global_zero else {}

    def compute_and_log(self, step: int | None = None) -> dict[str, float]:
        self.step = self.step + 1 if step is None else step
        metrics = self.compute()
        if metrics:
            self._fabric.log_dict(metrics, step=self.step)
        return metrics


__all__ = ["CUDA_PEAK_FLOPS", "Throughput", "ThroughputMonitor", "compute_dtype", "get_available_flops",
           "measure_flops"]
