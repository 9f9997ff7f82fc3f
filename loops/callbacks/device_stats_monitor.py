"""DeviceStatsMonitor: log the accelerator's statistics (CUDA memory counters) and, on CPU runs or on request, the
machine's CPU and memory use (read with psutil), around every training, validation and test batch, straight to the
loggers."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from loops.callbacks.callback import Callback

if TYPE_CHECKING:
    from loops.trainer.trainer import Trainer


class DeviceStatsMonitor(Callback):
    """Every `log_every_n_steps` training steps, send `DeviceStatsMonitor.<hook>/<stat>` to each logger (with the
    logger's group separator), as Lightning does; the values do not go to `trainer.logged_metrics`.

    cpu_stats: None logs CPU statistics only when training on the CPU; True also on an accelerator; False never.
    CPU statistics (`cpu_percent` of the whole machine since the last reading, `cpu_vm_percent` and
    `cpu_swap_percent`) are psutil's (`pip install 'fabric_kit[psutil]'`). Without psutil, a fit that would log
    them stops in `setup` with an ImportError saying so; cpu_stats=False logs the accelerator's statistics alone."""

    def __init__(self, cpu_stats: bool | None = None) -> None:
        self._cpu_stats = cpu_stats

    def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        if not trainer.loggers and not trainer.fast_dev_run:  # fast_dev_run drops the loggers: nothing to send
            raise ValueError("DeviceStatsMonitor sends its statistics to the loggers, and this Trainer has none "
                             "(logger=False); pass a logger or remove the callback")
        if self._logs_cpu(trainer.fabric.device):
            try:
                import psutil  # noqa: F401
            except ImportError as missing:
                raise ImportError("DeviceStatsMonitor reads CPU statistics with psutil, which is not installed: "
                                  "pip install 'fabric_kit[psutil]', or pass DeviceStatsMonitor(cpu_stats=False)"
                                  ) from missing

    def device_stats(self, device: torch.device) -> dict[str, float]:
        """The statistics of `device`, plus the CPU's where `cpu_stats` asks for them."""
        stats: dict[str, float] = {}
        if device.type == "cuda":
            stats.update(torch.cuda.memory_stats(device))
        if self._logs_cpu(device):
            stats.update(cpu_stats())
        return stats

    def _logs_cpu(self, device: torch.device) -> bool:
        return bool(self._cpu_stats) or (self._cpu_stats is None and device.type == "cpu")

    def _log(self, trainer: Trainer, hook: str) -> None:
        step = trainer.run_state.progress.batches_stepped  # the loggers' step
        if (step + 1) % trainer.log_every_n_steps and not trainer.should_stop:
            return
        stats = self.device_stats(trainer.fabric.device)
        if not stats:
            return
        prefix = f"{type(self).__qualname__}.{hook}"
        for logger in trainer.loggers:
            separator = getattr(logger, "group_separator", "/")
            logger.log_metrics({f"{prefix}{separator}{name}": value for name, value in stats.items()},
                               step=step)

    def on_train_batch_start(self, trainer: Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._log(trainer, "on_train_batch_start")

    def on_train_batch_end(self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._log(trainer, "on_train_batch_end")

    def on_validation_batch_start(self, trainer: Trainer, pl_module: Any, batch: Any, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        self._log(trainer, "on_validation_batch_start")

    def on_validation_batch_end(self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        self._log(trainer, "on_validation_batch_end")

    def on_test_batch_start(self, trainer: Trainer, pl_module: Any, batch: Any, batch_idx: int,
                            dataloader_idx: int = 0) -> None:
        self._log(trainer, "on_test_batch_start")

    def on_test_batch_end(self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                          dataloader_idx: int = 0) -> None:
        self._log(trainer, "on_test_batch_end")


def cpu_stats() -> dict[str, float]:
    """The machine's CPU busy share since the previous call (since psutil was imported, at the first), and its
    memory and swap use, in percent, from psutil."""
    import psutil

    return {"cpu_percent": psutil.cpu_percent(), "cpu_vm_percent": psutil.virtual_memory().percent,
            "cpu_swap_percent": psutil.swap_memory().percent}
