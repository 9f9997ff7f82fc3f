"""DeviceStatsMonitor: log the accelerator's statistics (CUDA memory counters) and, on CPU runs or on request, the
machine's CPU and memory use, around every training, validation and test batch, straight to the loggers."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from loops.callbacks.callback import Callback

if TYPE_CHECKING:
    from loops.trainer.trainer import Trainer

_PROC = Path("/proc")


class DeviceStatsMonitor(Callback):
    """Every `log_every_n_steps` training steps, send `DeviceStatsMonitor.<hook>/<stat>` to each logger (with the
    logger's group separator), as Lightning does; the values do not go to `trainer.logged_metrics`.

    cpu_stats: None logs CPU statistics only when training on the CPU; True also on an accelerator; False never.
    CPU statistics (`cpu_percent` of the whole machine since the last reading, `cpu_vm_percent` and
    `cpu_swap_percent`) are read from Linux's /proc, so psutil is not needed; elsewhere pass cpu_stats=False."""

    def __init__(self, cpu_stats: bool | None = None) -> None:
        self._cpu_stats = cpu_stats
        self._cpu = CpuReader()

    def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        if not trainer.loggers:
            raise ValueError("DeviceStatsMonitor sends its statistics to the loggers, and this Trainer has none "
                             "(logger=False); pass a logger or remove the callback")
        on_cpu = trainer.fabric.device.type == "cpu"
        if (self._cpu_stats or (self._cpu_stats is None and on_cpu)) and not self._cpu.available():
            raise ValueError("DeviceStatsMonitor reads CPU statistics from /proc, which this system does not have; "
                             "pass DeviceStatsMonitor(cpu_stats=False)")

    def device_stats(self, device: torch.device) -> dict[str, float]:
        """The statistics of `device`, plus the CPU's where `cpu_stats` asks for them."""
        stats: dict[str, float] = {}
        if device.type == "cuda":
            stats.update(torch.cuda.memory_stats(device))
        if self._cpu_stats or (self._cpu_stats is None and device.type == "cpu"):
            stats.update(self._cpu.read())
        return stats

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


class CpuReader:
    """The machine's CPU busy share since the previous reading (since boot at the first), and its memory and swap
    use, from /proc/stat and /proc/meminfo: what psutil's cpu_percent and virtual / swap memory percent give."""

    def __init__(self, proc: Path = _PROC) -> None:
        self._proc = proc
        self._last: tuple[int, int] = (0, 0)

    def available(self) -> bool:
        return (self._proc / "stat").is_file() and (self._proc / "meminfo").is_file()

    def read(self) -> dict[str, float]:
        # /proc/stat "cpu" line: user nice system idle iowait irq softirq steal (guest time is inside user)
        fields = [int(v) for v in (self._proc / "stat").read_text().split("\n", 1)[0].split()[1:9]]
        total, idle = sum(fields), fields[3] + fields[4]
        last_total, last_idle = self._last
        self._last = (total, idle)
        elapsed = total - last_total
        cpu_percent = 100.0 * (elapsed - (idle - last_idle)) / elapsed if elapsed > 0 else 0.0
        memory = {}
        for line in (self._proc / "meminfo").read_text().splitlines():
            name, _, value = line.partition(":")
            memory[name] = int(value.split()[0])
        swap_total = memory.get("SwapTotal", 0)
        return {"cpu_percent": cpu_percent,
                "cpu_vm_percent": 100.0 * (memory["MemTotal"] - memory["MemAvailable"]) / memory["MemTotal"],
                "cpu_swap_percent": 100.0 * (swap_total - memory.get("SwapFree", 0)) / swap_total if swap_total
                else 0.0}
