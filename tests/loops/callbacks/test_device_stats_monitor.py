"""DeviceStatsMonitor on a real CPU fit: the CPU statistics reach the logger under Lightning's names, and the /proc
readings are computed as psutil would."""
import csv
from pathlib import Path

import pytest

from loops.callbacks import DeviceStatsMonitor
from loops.callbacks.device_stats_monitor import CpuReader
from loops.loggers import CSVLogger
from tests.helpers.loops import Regression, loader, make_trainer

STATS = ("cpu_percent", "cpu_vm_percent", "cpu_swap_percent")


def _logged(logger):
    with open(Path(logger.log_dir) / "metrics.csv") as file:
        return list(csv.DictReader(file))


@pytest.mark.skipif(not CpuReader().available(), reason="CPU statistics come from Linux's /proc")
def test_cpu_stats_reach_the_logger_for_every_hook(tmp_path):
    logger = CSVLogger(tmp_path)
    trainer = make_trainer(max_epochs=1, logger=logger, log_every_n_steps=2, callbacks=[DeviceStatsMonitor()])
    trainer.fit(Regression(), loader(16), loader(8))
    rows = _logged(logger)
    for hook in ("on_train_batch_start", "on_train_batch_end", "on_validation_batch_start", "on_validation_batch_end"):
        for stat in STATS:
            values = [float(row[f"DeviceStatsMonitor.{hook}/{stat}"]) for row in rows
                      if row.get(f"DeviceStatsMonitor.{hook}/{stat}")]
            assert values and all(0.0 <= v <= 100.0 for v in values), (hook, stat)
    train_steps = {int(row["step"]) for row in rows if row.get("DeviceStatsMonitor.on_train_batch_end/cpu_percent")}
    assert train_steps == {1, 3}  # every log_every_n_steps=2 of the 4 steps
    assert not any(key.startswith("DeviceStatsMonitor") for key in trainer.logged_metrics)  # loggers only


def test_cpu_stats_off_logs_nothing_and_no_logger_is_an_error(tmp_path):
    logger = CSVLogger(tmp_path)
    trainer = make_trainer(max_epochs=1, logger=logger, log_every_n_steps=1,
                           callbacks=[DeviceStatsMonitor(cpu_stats=False)])
    trainer.fit(Regression(), loader(16))
    assert not (Path(logger.log_dir) / "metrics.csv").exists() or not any(
        key.startswith("DeviceStatsMonitor") for row in _logged(logger) for key in row)
    with pytest.raises(ValueError, match="logger=False"):
        make_trainer(max_epochs=1, callbacks=[DeviceStatsMonitor()]).fit(Regression(), loader(16))


def test_cpu_reader_arithmetic_on_proc_files(tmp_path):
    (tmp_path / "meminfo").write_text("MemTotal:  1000 kB\nMemFree: 100 kB\nMemAvailable:  250 kB\n"
                                      "SwapTotal: 200 kB\nSwapFree: 150 kB\n")
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 2 3\n")
    reader = CpuReader(tmp_path)
    assert reader.available()
    assert reader.read() == {"cpu_percent": 20.0, "cpu_vm_percent": 75.0, "cpu_swap_percent": 25.0}
    stat.write_text("cpu  160 0 120 720 100 0 0 0 0 0\n")  # 100 more ticks, 80 busy
    assert reader.read()["cpu_percent"] == pytest.approx(80.0)
    assert not CpuReader(tmp_path / "missing").available()
