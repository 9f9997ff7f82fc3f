"""TensorBoardLogger: event files whose records pass TensorBoard's checksums and hold the logged scalars,
hyperparameters for the HPARAMS tab and hparams.yaml, version folders, rank 0 only, and plain Fabric use."""
import os
import pickle
import sys
import threading
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fabric_kit import Fabric
from fabric_kit.loggers import DummyExperiment, TensorBoardLogger
from fabric_kit.loggers.folder import next_version
from tests.helpers.events import read_scalars


def _summary_tags(log_dir):
    from tensorboardX.proto.event_pb2 import Event

    read_scalars(log_dir)  # raises on a damaged record
    tags = set()
    for name in os.listdir(log_dir):
        if name.startswith("events.out.tfevents"):
            data = Path(log_dir, name).read_bytes()
            offset = 0
            while offset < len(data):
                length = int.from_bytes(data[offset:offset + 8], "little")
                event = Event.FromString(data[offset + 12:offset + 12 + length])
                tags.update(value.tag for value in event.summary.value)
                offset += 16 + length
    return tags


def test_scalars_hparams_and_media_are_written_and_read_back(tmp_path, clean_env):
    logger = TensorBoardLogger(tmp_path, name="exp")
    logger.log_hyperparams({"lr": 0.1, "optimizer": {"name": "adam", "betas": (0.9, 0.99)}, "act": torch.nn.ReLU})
    for step in range(3):
        logger.log_metrics({"loss": 1.0 / (step + 1), "acc": torch.tensor(0.25 * step)}, step=step)
    logger.experiment.add_histogram("weights", torch.arange(10.0), 0)
    logger.experiment.add_image("image", torch.rand(3, 4, 4), 0)
    logger.finalize("success")
    assert logger.log_dir == str(tmp_path / "exp" / "version_0")
    scalars = read_scalars(logger.log_dir)
    assert scalars["loss"] == [(0, 1.0), (1, 0.5), (2, pytest.approx(1 / 3))]
    assert scalars["acc"] == [(0, 0.0), (1, 0.25), (2, 0.5)]
    assert scalars["hp_metric"] == [(0, -1.0)]  # default_hp_metric: the run shows in the HPARAMS tab at once
    assert {"weights", "image", "_hparams_/experiment", "_hparams_/session_start_info"} <= _summary_tags(logger.log_dir)
    yaml = pytest.importorskip("yaml")
    saved = yaml.safe_load((tmp_path / "exp" / "version_0" / "hparams.yaml").read_text())
    assert saved == {"lr": 0.1, "optimizer": {"name": "adam", "betas": [0.9, 0.99]}, "act": "ReLU"}


def test_read_back_with_tensorboards_own_reader_when_installed(tmp_path, clean_env):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    logger = TensorBoardLogger(tmp_path)
    logger.log_metrics({"loss": 2.0}, step=5)
    logger.finalize("success")
    events = accumulator.EventAccumulator(logger.log_dir)
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(5, 2.0)]


def test_model_graph_is_written_when_tensorboard_is_installed(tmp_path, clean_env):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    model.example_input_array = torch.zeros(2, 4)
    logger = TensorBoardLogger(tmp_path, log_graph=True)
    logger.log_graph(model)
    logger.finalize("success")
    events = accumulator.EventAccumulator(logger.log_dir)
    events.Reload()
    assert events.Tags()["graph"] and any("Linear" in node.name for node in events.Graph().node)


def test_a_damaged_event_file_is_refused(tmp_path, clean_env):
    logger = TensorBoardLogger(tmp_path)
    logger.log_metrics({"loss": 2.0}, step=5)
    logger.finalize("success")
    (event_file,) = [p for p in (tmp_path / "lightning_logs" / "version_0").iterdir() if p.name.startswith("events")]
    data = bytearray(event_file.read_bytes())
    data[-6] ^= 0xFF
    event_file.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        read_scalars(event_file.parent)


def test_versions_names_sub_dir_and_prefix(tmp_path, clean_env):
    first, second = TensorBoardLogger(tmp_path), TensorBoardLogger(tmp_path)
    first.log_metrics({"x": 1.0}, step=0)
    assert (first.version, second.version) == (0, 1)  # second looked after first's folder existed
    named = TensorBoardLogger(root_dir=tmp_path, name="", version="run-a", sub_dir="train", prefix="p")
    named.log_metrics({"x": 1.0}, step=0)
    named.finalize("success")
    assert named.log_dir == str(tmp_path / "run-a" / "train")
    assert named.save_dir == str(tmp_path)
    assert read_scalars(named.log_dir) == {"p-x": [(0, 1.0)]}


@settings(max_examples=25, deadline=None)
@given(st.sets(st.integers(0, 50), max_size=5), st.sets(st.text("abc_", max_size=4), max_size=3))
def test_next_version_is_one_more_than_the_highest(tmp_path_factory, numbers, others):
    root = tmp_path_factory.mktemp("versions")
    for n in numbers:
        (root / f"version_{n}").mkdir()
    for name in others:
        (root / f"version_{name}x").mkdir(exist_ok=True)  # not version_<int>: ignored
    (root / "version_99").write_text("a file, not a folder")
    assert next_version(root) == (max(numbers) + 1 if numbers else 0)


def test_only_rank_zero_writes(tmp_path, clean_env, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    logger = TensorBoardLogger(tmp_path, version=0)
    assert isinstance(logger.experiment, DummyExperiment)
    logger.experiment.add_image("anything", torch.zeros(3, 2, 2), 0)
    logger.log_hyperparams({"lr": 0.1})
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.finalize("success")
    assert not tmp_path.joinpath("lightning_logs").exists()


def test_pickles_without_its_writer(tmp_path, clean_env):
    logger = TensorBoardLogger(tmp_path)
    logger.log_metrics({"x": 1.0}, step=0)
    copy = pickle.loads(pickle.dumps(logger))
    assert copy.log_dir == logger.log_dir and copy._experiment is None
    logger.finalize("success")


def test_bad_arguments_and_values_are_named(tmp_path, clean_env, monkeypatch):
    with pytest.raises(ValueError, match="save_dir"):
        TensorBoardLogger()
    with pytest.raises(ValueError, match=r"version=1\.5"):
        TensorBoardLogger(tmp_path, version=1.5)
    with pytest.raises(ValueError, match="'loss' = 'high'"):
        TensorBoardLogger(tmp_path).log_metrics({"loss": "high"}, step=0)
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    with pytest.raises(ImportError, match=r"pip install 'fabric_kit\[tensorboard\]'"):
        TensorBoardLogger(tmp_path)


def test_log_graph_without_tensorboard_warns(tmp_path, clean_env, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.warns(UserWarning, match="needs the tensorboard package"):
        logger = TensorBoardLogger(tmp_path, log_graph=True)
    logger.log_graph(torch.nn.Linear(2, 1), torch.zeros(1, 2))
    assert not tmp_path.joinpath("lightning_logs").exists()


def test_plain_fabric_log_dict_reaches_tensorboard_and_csv(tmp_path, clean_env):
    from fabric_kit.loggers import CSVLogger

    tensorboard, csv_logger = TensorBoardLogger(tmp_path), CSVLogger(tmp_path, name="csv")
    fabric = Fabric(accelerator="cpu", devices=1, loggers=[tensorboard, csv_logger])
    fabric.launch()
    for step in range(3):
        fabric.log_dict({"loss": torch.tensor(3.0 - step), "lr": 0.1}, step=step)
    fabric.log("done", 1.0, step=3)
    for logger in fabric.loggers:
        logger.finalize("success")
    assert fabric.logger is tensorboard
    scalars = read_scalars(tensorboard.log_dir)
    assert scalars["loss"] == [(0, 3.0), (1, 2.0), (2, 1.0)] and scalars["done"] == [(3, 1.0)]
    rows = (tmp_path / "csv" / "version_0" / "metrics.csv").read_text().splitlines()
    assert rows == ["done,loss,lr,step", ",3.0,0.1,0", ",2.0,0.1,1", ",1.0,0.1,2", "1.0,,,3"]


def _writer_threads():
    return [t for t in threading.enumerate() if type(t).__name__ == "_EventLoggerThread"]


def test_folders_graph_and_writer_as_lightning_fabrics(tmp_path, clean_env):
    """Lightning Fabric's TensorBoardLogger and ours, side by side: `root_dir` is the folder given, `log_dir`
    follows a subclass's `name` / `version`, `experiment.log_dir` is the log folder, `log_graph(model, input)`
    writes the graph without `log_graph=True`, and `finalize` ends the writer's thread."""
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    theirs = pytest.importorskip("lightning.fabric.loggers").TensorBoardLogger
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    before = _writer_threads()
    for cls in (TensorBoardLogger, theirs):
        root = tmp_path / cls.__module__

        class Named(cls):
            name = property(lambda self: "renamed")
            version = property(lambda self: "v7")

        logger = cls(root_dir=root, name="exp")
        assert (logger.root_dir, logger.log_dir) == (str(root), str(root / "exp" / "version_0"))
        assert Named(root_dir=root).log_dir == str(root / "renamed" / "v7")
        assert logger.experiment.log_dir == logger.log_dir
        logger.log_graph(model, torch.zeros(2, 4))
        logger.finalize("success")
        events = accumulator.EventAccumulator(logger.log_dir)
        events.Reload()
        assert any("Linear" in node.name for node in events.Graph().node), cls
    assert [t for t in _writer_threads() if t not in before] == []
