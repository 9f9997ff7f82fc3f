"""CSVLogger: one metrics.csv row per log_metrics call with a column for every key ever logged, flushed every
`flush_logs_every_n_steps`, hparams.yaml that YAML readers load, rank 0 only."""
import csv
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fabric_kit.loggers import CSVLogger, DummyExperiment


def _rows(logger):
    with open(f"{logger.log_dir}/metrics.csv", newline="") as file:
        return list(csv.DictReader(file))


def test_new_keys_widen_the_header_and_keep_earlier_rows(tmp_path):
    logger = CSVLogger(tmp_path, flush_logs_every_n_steps=1)
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.log_metrics({"loss": 0.5, "val_acc": 0.9}, step=1)
    logger.finalize("success")
    assert _rows(logger) == [{"loss": "1.0", "step": "0", "val_acc": ""},
                             {"loss": "0.5", "step": "1", "val_acc": "0.9"}]


def test_rows_wait_for_the_flush_step(tmp_path):
    logger = CSVLogger(tmp_path, flush_logs_every_n_steps=3)
    logger.log_metrics({"x": 0.0}, step=0)
    logger.log_metrics({"x": 1.0}, step=1)
    assert not (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").exists()
    logger.log_metrics({"x": 2.0}, step=2)  # (2 + 1) % 3 == 0
    assert [row["x"] for row in _rows(logger)] == ["0.0", "1.0", "2.0"]
    logger.log_metrics({"x": 3.0})  # no step: the row's position
    logger.finalize("success")
    assert _rows(logger)[-1] == {"x": "3.0", "step": "0"}


@settings(max_examples=30, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(["a", "b", "c/d"]),
                                st.floats(allow_nan=False, allow_infinity=False, width=32), min_size=1),
                min_size=1, max_size=6),
       st.integers(1, 4))
def test_every_logged_value_is_read_back(tmp_path_factory, rows, flush_every):
    logger = CSVLogger(tmp_path_factory.mktemp("csv"), flush_logs_every_n_steps=flush_every)
    for step, metrics in enumerate(rows):
        logger.log_metrics(metrics, step=step)
    logger.finalize("success")
    read = _rows(logger)
    assert [int(row["step"]) for row in read] == list(range(len(rows)))
    for written, row in zip(rows, read, strict=False):
        assert {k: float(v) for k, v in row.items() if v and k != "step"} == pytest.approx(written)


def test_hparams_yaml_loads_back(tmp_path):
    yaml = pytest.importorskip("yaml")
    logger = CSVLogger(tmp_path, name="exp", version="v")
    logger.log_hyperparams({"lr": 1e-3, "layers": [32, 16], "true": "a key YAML would read as a bool",
                            "nested": {"x": None, "inf": math.inf}, "fn": math.sqrt})
    saved = yaml.safe_load((tmp_path / "exp" / "v" / "hparams.yaml").read_text())
    assert saved == {"lr": 1e-3, "layers": [32, 16], "true": "a key YAML would read as a bool",
                     "nested": {"x": None, "inf": math.inf}, "fn": "sqrt"}


def test_reusing_a_version_replaces_its_metrics_with_a_warning(tmp_path):
    first = CSVLogger(tmp_path, version=0)
    first.log_metrics({"x": 1.0}, step=0)
    first.finalize("success")
    second = CSVLogger(tmp_path, version=0)
    with pytest.warns(UserWarning, match="metrics.csv exists"):
        second.log_metrics({"y": 2.0}, step=0)
    second.finalize("success")
    assert _rows(second) == [{"y": "2.0", "step": "0"}]


def test_only_rank_zero_writes(tmp_path, clean_env, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    logger = CSVLogger(tmp_path)
    assert isinstance(logger.experiment, DummyExperiment)
    logger.log_hyperparams({"lr": 0.1})
    logger.log_metrics({"x": 1.0}, step=0)
    logger.finalize("success")
    assert list(tmp_path.iterdir()) == []


def test_bad_flush_setting_is_named(tmp_path):
    with pytest.raises(ValueError, match="flush_logs_every_n_steps=0"):
        CSVLogger(tmp_path, flush_logs_every_n_steps=0)
