"""DeviceStatsMonitor on a real CPU fit: the CPU statistics reach the logger under Lightning's names, and without
psutil the error names the extra to install."""
import csv
import importlib.util
import sys
from pathlib import Path

import pytest

from loops.callbacks import DeviceStatsMonitor
from loops.loggers import CSVLogger
from tests.helpers.loops import Regression, loader, make_trainer

STATS = ("cpu_percent", "cpu_vm_percent", "cpu_swap_percent")


def _logged(logger):
    with open(Path(logger.log_dir) / "metrics.csv") as file:
        return list(csv.DictReader(file))


@pytest.mark.skipif(importlib.util.find_spec("psutil") is None, reason="CPU statistics come from psutil")
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


def test_without_psutil_the_error_names_the_extra_unless_cpu_stats_are_off(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "psutil", None)  # what an environment without it gives import
    trainer = make_trainer(max_epochs=1, logger=CSVLogger(tmp_path), callbacks=[DeviceStatsMonitor()])
    with pytest.raises(ImportError, match=r"pip install 'fabric_kit\[psutil\]', or pass .*\(cpu_stats=False\)"):
        trainer.fit(Regression(), loader(16))
    trainer = make_trainer(max_epochs=1, logger=CSVLogger(tmp_path), callbacks=[DeviceStatsMonitor(cpu_stats=False)])
    trainer.fit(Regression(), loader(16))
