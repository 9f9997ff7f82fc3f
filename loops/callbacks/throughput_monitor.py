"""ThroughputMonitor: batches, samples (and items, and FLOPs) per second over a rolling window, logged per stage;
with the device's peak FLOP/s known, the model FLOPs utilisation (MFU). The arithmetic is fabric_kit's
`Throughput`; this callback only feeds it from the Trainer's hooks."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from fabric_kit.throughput import Throughput, compute_dtype, get_available_flops
from loops.callbacks.callback import Callback

if TYPE_CHECKING:
    from loops.trainer.trainer import Trainer

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
        self._eval_steps: dict[str, int] = {}  # stage -> the logging step of its last batch, kept across calls
        self._world_size = 1

    def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        if self.available_flops is None:
            self.available_flops = get_available_flops(trainer.fabric.device, compute_dtype(trainer.fabric.precision))
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
        if stage == "train":
            metrics["epoch"] = trainer.current_epoch
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
            if stage == "validate" and trainer.state.fn == "fit":
                self._eval_steps[stage] = 0  # each validation of a fit logs from step 1, as Lightning's does

    def _eval_batch_end(self, trainer: Trainer, pl_module: Any, stage: str, batch: Any) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        self._update(trainer, pl_module, stage, batch)
        step = self._eval_steps[stage] = self._eval_steps.get(stage, 0) + 1  # test() after test() carries on
        if self._counts[stage][0] % trainer.log_every_n_steps == 0:
            self._log(trainer, stage, step)

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
