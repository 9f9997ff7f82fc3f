"""ThroughputMonitor: batches, samples (and items, and FLOPs) per second over a rolling window, logged per stage;
with the device's peak FLOP/s known, the model FLOPs utilisation (MFU)."""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from loops.callbacks.callback import Callback

if TYPE_CHECKING:
    from loops.trainer.trainer import Trainer

# Dense peak FLOP/s from the vendors' data sheets, by compute dtype ("tf32": float32 matmuls on tensor cores).
_CUDA_PEAK_FLOPS: dict[str, dict[Any, float]] = {
    "h100 sxm": {torch.float32: 67e12, "tf32": 495e12, torch.bfloat16: 989e12, torch.float16: 989e12},
    "h100 pcie": {torch.float32: 51e12, "tf32": 378e12, torch.bfloat16: 756e12, torch.float16: 756e12},
    "a100": {torch.float32: 19.5e12, "tf32": 156e12, torch.bfloat16: 312e12, torch.float16: 312e12},
    "l4": {torch.float32: 30.3e12, "tf32": 60e12, torch.bfloat16: 121e12, torch.float16: 121e12},
}

def get_available_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """The device's peak FLOP/s in `dtype`, or None when unknown (CPUs, GPUs not in the table)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device).lower()
    chip = "h100 sxm" if "h200" in name or ("h100" in name and "pcie" not in name) else \
        "h100 pcie" if "h100" in name else next((key for key in ("a100", "l4") if key in name), None)
    if chip is None:
        return None
    if dtype is torch.float32 and torch.get_float32_matmul_precision() != "highest":
        return _CUDA_PEAK_FLOPS[chip]["tf32"]
    return _CUDA_PEAK_FLOPS[chip].get(dtype)


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype matmuls run in under a Trainer precision such as "bf16-mixed" or "32-true"."""
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    return torch.float64 if precision.startswith("64") else torch.float32


class Throughput:
    """Running totals of one stage over the last `window_size` updates; rates appear once the window is full."""

    def __init__(self, available_flops: float | None = None, world_size: int = 1, window_size: int = 100,
                 separator: str = "/") -> None:
        if isinstance(window_size, bool) or not isinstance(window_size, int) or window_size < 2:
            raise ValueError(f"window_size={window_size!r}: pass an int >= 2 (rates need two points)")
        self.available_flops, self.world_size, self.separator = available_flops, world_size, separator
        self._window = window_size
        self._time: deque[float] = deque(maxlen=window_size)
        self._batches: deque[int] = deque(maxlen=window_size)
        self._samples: deque[int] = deque(maxlen=window_size)
        self._lengths: deque[int] = deque(maxlen=window_size)
        self._flops: deque[float] = deque(maxlen=window_size)

    def update(self, *, time: float, batches: int, samples: int, lengths: int | None = None,
               flops: float | None = None) -> None:
        """Totals since the stage started on this device (`flops`: this batch's FLOPs on this device)."""
        if samples < batches:
            raise ValueError(f"samples ({samples}) cannot be fewer than batches ({batches}); check batch_size_fn")
        self._time.append(time)
        self._batches.append(batches)
        self._samples.append(samples)
        if lengths is not None:
            self._lengths.append(lengths)
        if flops is not None:
            self._flops.append(flops)

    def compute(self) -> dict[str, float]:
        sep = self.separator
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
            metrics[f"device{sep}{name}"] = per_device
            if self.world_size > 1:
                metrics[name] = per_device * self.world_size
        if "flops_per_sec" in rates and self.available_flops:
            metrics[f"device{sep}mfu"] = rates["flops_per_sec"] / self.available_flops
        return metrics


class ThroughputMonitor(Callback):
    """Log `<stage>/device/samples_per_sec`, `.../batches_per_sec`, with `length_fn` `.../items_per_sec`, with a
    `flops_per_batch` attribute on the module `.../flops_per_sec`, and with a known peak (`available_flops`, set
    from a short CUDA table or by you before fit) `.../mfu`; plus `<stage>/time`, `/batches`, `/samples`. With
    several processes the global rates come without the `device/` part. kwargs: `window_size` (100), `separator`.

    Training logs every `log_every_n_steps` optimizer steps (time spent validating is left out of its rates);
    validation, test and predict log every `log_every_n_steps` batches. Rank 0 only; values go to the loggers and
    `trainer.logged_metrics`."""

    def __init__(self, batch_size_fn: Callable[[Any], int], length_fn: Callable[[Any], int] | None = None,
                 **kwargs: Any) -> None:
        if not callable(batch_size_fn):
            raise ValueError(f"batch_size_fn={batch_size_fn!r} is not callable; pass e.g. lambda batch: len(batch[0])")
        Throughput(**kwargs)  # bad window_size / separator fail here, not at fit
        self.batch_size_fn, self.length_fn, self.kwargs = batch_size_fn, length_fn, kwargs
        self.available_flops: float | None = None
        self._throughputs: dict[str, Throughput] = {}
        self._t0s: dict[str, float] = {}
        self._counts: dict[str, list[int]] = {}  # stage -> [batches, samples, lengths]
        self._steps_before = 0
        self._world_size = 1

    def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        if self.available_flops is None:
            self.available_flops = get_available_flops(trainer.fabric.device, compute_dtype(trainer.precision))
        self._world_size = trainer.world_size

    # -- measuring ------------------------------------------------------------------------------------------------
    def _start(self, stage: str) -> None:
        self._throughputs[stage] = Throughput(self.available_flops, self._world_size, **self.kwargs)
        self._counts[stage] = [0, 0, 0]
        self._t0s[stage] = time.perf_counter()

    @torch.no_grad()
    def _update(self, trainer: Trainer, pl_module: Any, stage: str, batch: Any) -> None:
        if trainer.fabric.device.type == "cuda":
            torch.cuda.synchronize(trainer.fabric.device)  # the batch's kernels are part of its time
        counts = self._counts[stage]
        counts[0] += 1
        counts[1] += self.batch_size_fn(batch)
        if self.length_fn is not None:
            counts[2] += self.length_fn(batch)
        self._throughputs[stage].update(time=time.perf_counter() - self._t0s[stage], batches=counts[0],
                                        samples=counts[1], lengths=counts[2] if self.length_fn else None,
                                        flops=getattr(pl_module, "flops_per_batch", None))

    def _log(self, trainer: Trainer, stage: str, step: int) -> None:
        throughput = self._throughputs[stage]
        metrics = {f"{stage}{throughput.separator}{name}": value for name, value in throughput.compute().items()}
        trainer.logged_metrics.update({name: torch.tensor(value) for name, value in metrics.items()})
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)

    # -- training -------------------------------------------------------------------------------------------------
    def on_train_start(self, trainer: Trainer, pl_module: Any) -> None:
        if trainer.is_global_zero:
            self._start("train")

    def on_train_batch_start(self, trainer: Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._steps_before = trainer.global_step

    def on_train_batch_end(self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not trainer.is_global_zero:
            return
        self._update(trainer, pl_module, "train", batch)
        stepped = trainer.global_step != self._steps_before  # measure whole accumulation windows
        step = trainer.run_state.progress.batches_stepped  # the loggers' step
        if stepped and ((step + 1) % trainer.log_every_n_steps == 0 or trainer.should_stop):
            self._log(trainer, "train", step)

    # -- evaluation -----------------------------------------------------------------------------------------------
    def _eval_start(self, trainer: Trainer, stage: str) -> None:
        if trainer.is_global_zero and not trainer.sanity_checking:
            self._start(stage)

    def _eval_batch_end(self, trainer: Trainer, pl_module: Any, stage: str, batch: Any) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        self._update(trainer, pl_module, stage, batch)
        batches = self._counts[stage][0]
        if batches % trainer.log_every_n_steps == 0:
            self._log(trainer, stage, batches)

    def on_validation_start(self, trainer: Trainer, pl_module: Any) -> None:
        self._eval_start(trainer, "validate")

    def on_validation_batch_end(self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        self._eval_batch_end(trainer, pl_module, "validate", batch)

    def on_validation_end(self, trainer: Trainer, pl_module: Any) -> None:
        if trainer.is_global_zero and not trainer.sanity_checking and "train" in self._t0s \
                and trainer.state.fn == "fit":
            self._t0s["train"] += time.perf_counter() - self._t0s["validate"]  # validation is not training time

    def on_test_start(self, trainer: Trainer, pl_module: Any) -> None:
        self._eval_start(trainer, "test")

    def on_test_batch_end(self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                          dataloader_idx: int = 0) -> None:
        self._eval_batch_end(trainer, pl_module, "test", batch)

    def on_predict_start(self, trainer: Trainer, pl_module: Any) -> None:
        self._eval_start(trainer, "predict")

    def on_predict_batch_end(self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                             dataloader_idx: int = 0) -> None:
        self._eval_batch_end(trainer, pl_module, "predict", batch)
