"""The Trainer's loggers: the default TensorBoard logger and Lightning's folder layout, logger=False, several
loggers at once, hyperparameters, finalize, a seed-style run whose TensorBoard scalars read back as logged, and
self.log refused in hooks where Lightning allows no logging, naming the hook."""
import os
import sys

import pytest
import torch
from torch.utils.data import DataLoader, random_split

import loops as L
from loops.callbacks import EarlyStopping, ModelCheckpoint
from loops.loggers import CSVLogger, Logger, TensorBoardLogger
from tests.helpers.events import read_scalars
from tests.helpers.loops import Regression, dataset, loader

QUIET = dict(accelerator="cpu", devices=1, enable_progress_bar=False, enable_model_summary=False)


class RecordingLogger(Logger):
    """Keeps what the Trainer hands a logger, in order."""

    def __init__(self):
        self.metrics, self.params, self.statuses = [], [], []

    name, version = "recording", 0

    def log_metrics(self, metrics, step=None):
        self.metrics.append((step, dict(metrics)))

    def log_hyperparams(self, params, *args, **kwargs):
        self.params.append(dict(params))

    def finalize(self, status):
        self.statuses.append(status)


def _fit(trainer, model=None, n=32):
    trainer.fit(model or Regression(), loader(n=n, batch_size=4), loader(n=8, batch_size=4))
    return trainer


def test_default_logger_and_checkpoint_layout_match_lightning(tmp_path):
    first = _fit(L.Trainer(default_root_dir=tmp_path, max_epochs=2, **QUIET))
    assert isinstance(first.logger, TensorBoardLogger) and first.loggers == [first.logger]
    version_0 = tmp_path / "lightning_logs" / "version_0"
    assert first.log_dir == str(version_0)
    assert first.checkpoint_callback.best_model_path == str(version_0 / "checkpoints" / "epoch=1-step=16.ckpt")
    assert [step for step, _ in read_scalars(version_0)["val_loss"]] == [7, 15]  # each epoch's last step
    second = _fit(L.Trainer(default_root_dir=tmp_path, max_epochs=1, **QUIET))
    assert second.log_dir == str(tmp_path / "lightning_logs" / "version_1")
    assert (tmp_path / "lightning_logs" / "version_1" / "hparams.yaml").read_text() == "lr: 0.1\n"


def test_csv_is_the_default_without_tensorboardx(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    trainer = _fit(L.Trainer(default_root_dir=tmp_path, max_epochs=1, log_every_n_steps=2, **QUIET))
    assert type(trainer.logger) is CSVLogger
    rows = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines()
    assert rows[0] == "epoch,step,train_loss,val_loss" and len(rows) == 1 + 4 + 1  # 8 steps / 2, one validation


def test_logger_false_writes_no_logs(tmp_path):
    trainer = _fit(L.Trainer(default_root_dir=tmp_path, logger=False, max_epochs=1, **QUIET))
    assert trainer.logger is None and trainer.loggers == [] and trainer.log_dir == str(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints"]  # Lightning's <root>/checkpoints


def test_fast_dev_run_writes_no_logs(tmp_path):
    trainer = _fit(L.Trainer(default_root_dir=tmp_path, fast_dev_run=True, **QUIET))
    assert trainer.loggers == [] and not (tmp_path / "lightning_logs").exists()


def test_several_loggers_receive_the_same_values(tmp_path):
    recording, csv_logger = RecordingLogger(), CSVLogger(tmp_path, name="csv")
    trainer = _fit(L.Trainer(logger=[recording, csv_logger], max_epochs=2, log_every_n_steps=1,
                             enable_checkpointing=False, default_root_dir=tmp_path, **QUIET), n=16)
    assert trainer.logger is recording and trainer.loggers == [recording, csv_logger]
    assert trainer.log_dir == str(tmp_path)  # a first logger without a version folder: its save_dir, else root
    rows = (tmp_path / "csv" / "version_0" / "metrics.csv").read_text().splitlines()[1:]
    assert len(rows) == len(recording.metrics) == 8 + 2
    assert recording.params == [{"lr": 0.1}] and recording.statuses == ["success"]


def test_hyperparameters_of_module_and_datamodule_are_merged_and_clashes_named(tmp_path):
    class Data(L.LightningDataModule):
        def __init__(self, batch_size=4, lr=0.1):
            super().__init__()
            self.save_hyperparameters()

        def train_dataloader(self):
            return loader(n=8, batch_size=self.hparams.batch_size)

    recording = RecordingLogger()
    trainer = L.Trainer(logger=recording, max_epochs=1, enable_checkpointing=False, **QUIET)
    trainer.fit(Regression(lr=0.1), datamodule=Data())
    assert recording.params == [{"lr": 0.1, "batch_size": 4}]
    trainer.validate(Regression(lr=0.1), loader(n=8), verbose=False)  # every stage logs them, as Lightning
    assert recording.params[-1] == {"lr": 0.1}
    with pytest.raises(RuntimeError, match=r"\['lr'\].*different values"):
        L.Trainer(logger=RecordingLogger(), max_epochs=1, enable_checkpointing=False, **QUIET).fit(
            Regression(lr=0.5), datamodule=Data())


def test_finalize_reports_a_failed_run():
    class Broken(Regression):
        def training_step(self, batch, batch_idx):
            raise KeyError("broken")

    recording = RecordingLogger()
    with pytest.raises(KeyError):
        _fit(L.Trainer(logger=recording, max_epochs=1, enable_checkpointing=False, **QUIET), Broken())
    assert recording.statuses == ["failed"]


def test_bad_logger_argument_is_named():
    with pytest.raises(TypeError, match=r"logger=.*\['str'\]"):
        L.Trainer(logger="tensorboard", **QUIET)


class Classifier(L.LightningModule):
    def __init__(self, lr=0.05):
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(4, 1)

    def forward(self, x):
        return self.layer(x)

    def training_step(self, batch, batch_idx):
        loss = torch.nn.functional.mse_loss(self(batch[0]), batch[1])
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", torch.nn.functional.mse_loss(self(batch[0]), batch[1]), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class Data(L.LightningDataModule):
    def __init__(self, batch_size=8):
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage=None):
        self.train_set, self.val_set = random_split(dataset(48), [32, 16], generator=torch.Generator().manual_seed(0))

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=self.hparams.batch_size)


class WeightHistograms(L.Callback):
    """Writes through the logger's own object, as seed scripts do with images and histograms."""

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            trainer.logger.experiment.add_histogram("weights", pl_module.layer.weight, trainer.global_step)


def test_seed_style_run_tensorboard_scalars_match_the_logged_values(tmp_path):
    recording = RecordingLogger()
    tensorboard = TensorBoardLogger(tmp_path, name="seed")
    trainer = L.Trainer(max_epochs=4, logger=[tensorboard, recording], log_every_n_steps=2, **QUIET,
                        callbacks=[EarlyStopping("val_loss", patience=1), ModelCheckpoint(monitor="val_loss"),
                                   WeightHistograms()])
    L.seed_everything(0)
    trainer.fit(Classifier(), datamodule=Data())
    expected = {}
    for step, metrics in recording.metrics:
        for key, value in metrics.items():
            expected.setdefault(key, []).append((step, pytest.approx(float(value), rel=1e-6)))
    scalars = read_scalars(tensorboard.log_dir)
    assert scalars.pop("hp_metric") == [(0, -1.0)]
    assert scalars == expected and {"train_loss_step", "train_loss_epoch", "val_loss", "epoch"} <= set(scalars)
    assert trainer.checkpoint_callback.dirpath == str(tmp_path / "seed" / "version_0" / "checkpoints")
    yaml = pytest.importorskip("yaml")
    assert yaml.safe_load((tmp_path / "seed" / "version_0" / "hparams.yaml").read_text()) == {"lr": 0.05,
                                                                                            "batch_size": 8}


class LogsInSetup(Regression):
    def setup(self, stage):
        self.log("x", 1.0)


class LogsInOnFitStart(Regression):
    def on_fit_start(self):
        self.log("x", 1.0)


class LogsInOnTrainEnd(Regression):
    def on_train_end(self):
        self.log("x", 1.0)


class LogsInOnSaveCheckpoint(Regression):
    def on_save_checkpoint(self, checkpoint):
        self.log_dict({"x": 1.0})


class LogsInConfigureOptimizers(Regression):
    def configure_optimizers(self):
        self.log("x", 1.0)


@pytest.mark.parametrize("model, hook", [(LogsInSetup, "setup"), (LogsInOnFitStart, "on_fit_start"),
                                         (LogsInOnTrainEnd, "on_train_end"),
                                         (LogsInOnSaveCheckpoint, "on_save_checkpoint"),
                                         (LogsInConfigureOptimizers, "configure_optimizers")])
def test_self_log_in_a_hook_without_logging_names_the_hook(tmp_path, model, hook):
    trainer = L.Trainer(logger=False, max_epochs=1, default_root_dir=tmp_path, **QUIET)
    with pytest.raises(RuntimeError, match=rf"self.log\('x'\) was called in {hook}, outside the hooks that can log"):
        _fit(trainer, model())


def test_on_train_start_logs_into_the_first_epoch(tmp_path):
    """As in Lightning: on_train_start may log; the value is an epoch-level value of the first epoch."""
    class LogsInOnTrainStart(Regression):
        def on_train_start(self):
            self.log("started", 3.0)

    trainer = L.Trainer(logger=False, max_epochs=1, enable_checkpointing=False, **QUIET)
    _fit(trainer, LogsInOnTrainStart())
    assert trainer.callback_metrics["started"].item() == 3.0


def test_self_log_from_a_callback_hook_without_logging_names_it(tmp_path):
    class Logs(L.Callback):
        def on_validation_end(self, trainer, pl_module):
            pl_module.log("y", 1.0)

    trainer = L.Trainer(logger=False, max_epochs=1, callbacks=[Logs()], enable_checkpointing=False, **QUIET)
    with pytest.raises(RuntimeError, match="called in on_validation_end"):
        _fit(trainer)


def graph_module(trainers):
    class Graph(trainers.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)
            self.example_input_array = torch.zeros(2, 4)

        def forward(self, x):
            return self.layer(x)

    return Graph()


def test_trainer_loggers_folders_graph_and_writer_as_lightnings(tmp_path):
    """Lightning's Trainer loggers' `root_dir` is `save_dir/name` (Lightning Fabric's is `save_dir`); with
    `log_graph=True` the TensorBoard logger writes a LightningModule's graph outside a Trainer too; after fit no
    event writer thread is left running."""
    import threading

    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    pl_loggers = pytest.importorskip("lightning.pytorch.loggers")
    pl = pytest.importorskip("lightning.pytorch")
    for trainers, tensorboard, csv in ((L, TensorBoardLogger, CSVLogger),
                                       (pl, pl_loggers.TensorBoardLogger, pl_loggers.CSVLogger)):
        root = tmp_path / tensorboard.__module__
        assert tensorboard(root, name="exp").root_dir == csv(root, name="exp").root_dir == str(root / "exp")
        model = graph_module(trainers)
        logger = tensorboard(root, log_graph=True)
        logger.log_graph(model)
        logger.finalize("success")
        events = accumulator.EventAccumulator(logger.log_dir)
        events.Reload()
        assert events.Tags()["graph"], tensorboard
    before = threading.enumerate()
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, default_root_dir=tmp_path, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(Regression(), loader())
    assert os.listdir(trainer.logger.log_dir)  # it wrote
    assert not [t for t in threading.enumerate() if type(t).__name__ == "_EventLoggerThread" and t not in before]


def test_a_subclass_overriding_name_and_version_decides_the_folders(tmp_path):
    pl_loggers = pytest.importorskip("lightning.pytorch.loggers")
    for base in (CSVLogger, TensorBoardLogger, pl_loggers.CSVLogger, pl_loggers.TensorBoardLogger):
        class Named(base):
            @property
            def name(self):
                return "custom"

            @property
            def version(self):
                return "v7"

        logger = Named(tmp_path)
        assert (logger.root_dir, logger.log_dir) == (str(tmp_path / "custom"), str(tmp_path / "custom" / "v7")), base
