"""LearningRateMonitor, GradientAccumulationScheduler, Timer and ModelSummary on real fits: what reaches the
logger, how many optimizer steps each epoch takes, when the time limit stops training, and the printed table."""
import csv
from datetime import timedelta

import pytest
import torch
from torch import nn

import loops as L
from fabric_kit.checkpoint import read_checkpoint
from fabric_kit.loggers import CSVLogger
from loops.callbacks import GradientAccumulationScheduler, LearningRateMonitor, ModelCheckpoint, ModelSummary, Timer
from loops.callbacks.model_summary import human_readable_count, summarize
from tests.helpers.loops import Regression, loader, make_trainer


class Scheduled(Regression):
    """SGD with momentum, two named parameter groups, a per-epoch StepLR halving the rate."""

    def configure_optimizers(self):
        optimizer = torch.optim.SGD([{"params": [self.layer.weight], "name": "weight"},
                                     {"params": [self.layer.bias], "name": "bias", "lr": 0.01}],
                                    lr=0.1, momentum=0.9, weight_decay=0.001)
        return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)]


def _csv_rows(logger):
    logger.save()
    with open(logger.experiment.metrics_file_path) as file:
        return list(csv.DictReader(file))


def test_lr_monitor_logs_each_epoch_under_lightning_names(tmp_path):
    monitor = LearningRateMonitor(log_momentum=True, log_weight_decay=True)
    logger = CSVLogger(tmp_path)
    trainer = make_trainer(max_epochs=3, callbacks=[monitor], logger=logger, limit_val_batches=0)
    trainer.fit(Scheduled(), loader())
    assert monitor.lrs == {"lr-SGD/weight": [0.1, 0.05, 0.025], "lr-SGD/bias": [0.01, 0.005, 0.0025]}
    rows = [row for row in _csv_rows(logger) if row.get("lr-SGD/weight")]
    assert [(int(r["step"]), float(r["lr-SGD/weight"])) for r in rows] == [(0, 0.1), (8, 0.05), (16, 0.025)]
    assert all(float(r["lr-SGD/weight-momentum"]) == 0.9 and float(r["lr-SGD/bias-weight_decay"]) == 0.001
               for r in rows)


def test_lr_monitor_per_step_follows_log_every_n_steps(tmp_path):
    class Adams(Regression):
        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=0.02, betas=(0.8, 0.99))

    monitor = LearningRateMonitor(logging_interval="step", log_momentum=True)
    logger = CSVLogger(tmp_path)
    make_trainer(max_epochs=1, callbacks=[monitor], logger=logger, log_every_n_steps=4,
                 limit_val_batches=0).fit(Adams(), loader())
    assert monitor.lrs == {"lr-Adam": [0.02, 0.02]}
    rows = [row for row in _csv_rows(logger) if row.get("lr-Adam")]
    assert [(int(r["step"]), float(r["lr-Adam-momentum"])) for r in rows] == [(3, 0.8), (7, 0.8)]


def test_lr_monitor_needs_a_logger_and_a_known_interval():
    with pytest.raises(ValueError, match="needs a logger"):
        make_trainer(max_epochs=1, callbacks=[LearningRateMonitor()]).fit(Regression(), loader())
    with pytest.raises(ValueError, match=r"logging_interval='batch'\) is not valid; accepted: None, 'step'"):
        LearningRateMonitor(logging_interval="batch")


class StepCounter(L.Callback):
    def __init__(self):
        self.per_epoch = {}

    def on_train_epoch_end(self, trainer, pl_module):
        self.per_epoch[trainer.current_epoch] = trainer.global_step - sum(self.per_epoch.values())


def test_accumulation_follows_the_schedule():
    counter = StepCounter()
    scheduler = GradientAccumulationScheduler({1: 4, 2: 8})
    make_trainer(max_epochs=4, callbacks=[scheduler, counter], limit_val_batches=0).fit(Regression(), loader())
    assert counter.per_epoch == {0: 8, 1: 2, 2: 1, 3: 1}  # 8 batches an epoch; factor 1, 4, 8, 8


def test_accumulation_schedule_errors():
    with pytest.raises(ValueError, match=r"epoch -1 is not valid"):
        GradientAccumulationScheduler({-1: 2})
    with pytest.raises(ValueError, match=r"0 batches for epoch 3 is not valid"):
        GradientAccumulationScheduler({3: 0})
    trainer = make_trainer(max_epochs=1, accumulate_grad_batches=2, callbacks=[GradientAccumulationScheduler({0: 4})])
    with pytest.raises(ValueError, match=r"accumulate_grad_batches=2\) and GradientAccumulationScheduler"):
        trainer.fit(Regression(), loader())


def test_timer_stops_training_and_counts_on_after_resume(tmp_path, capsys):
    timer = Timer(duration=timedelta(microseconds=1), verbose=True)  # spent by the first step
    trainer = make_trainer(max_epochs=5, callbacks=[timer], limit_val_batches=0)
    trainer.fit(Regression(), loader())
    assert trainer.global_step == 1 and "Time limit reached." in capsys.readouterr().out
    assert timer.time_elapsed("train") > 0 and timer.time_remaining() <= 0
    per_epoch = Timer(duration=timedelta(microseconds=1), interval="epoch")
    trainer = make_trainer(max_epochs=5, callbacks=[per_epoch], limit_val_batches=0)
    trainer.fit(Regression(), loader())
    assert trainer.global_step == 8 and trainer.current_epoch == 1
    spent = Timer(duration={"seconds": 0})  # nothing left when fit starts
    trainer = make_trainer(max_epochs=5, callbacks=[spent], limit_val_batches=0)
    trainer.fit(Regression(), loader())
    assert trainer.global_step == 0

    measuring = Timer()
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = make_trainer(max_epochs=2, callbacks=[measuring, checkpoint], num_sanity_val_steps=0)
    trainer.fit(Regression(), loader(), loader(n=8))
    trained, validated = measuring.time_elapsed("train"), measuring.time_elapsed("validate")
    assert trained > validated > 0 and measuring.time_remaining() is None
    resumed = Timer(duration=timedelta(days=1))
    trainer = make_trainer(max_epochs=3, callbacks=[resumed, ModelCheckpoint(dirpath=tmp_path)],
                           num_sanity_val_steps=0)
    saved = read_checkpoint(tmp_path / "last.ckpt")["callbacks"]["Timer"]["time_elapsed"]["train"]
    trainer.fit(Regression(), loader(), loader(n=8), ckpt_path=str(tmp_path / "last.ckpt"))
    assert 0 < saved <= trained and resumed.time_elapsed("train") > saved  # counts on from the saved time


def test_timer_arguments():
    with pytest.raises(ValueError, match=r"Timer\(duration='1 hour'\) is not valid; accepted: 'DD:HH:MM:SS'"):
        Timer(duration="1 hour")
    with pytest.raises(ValueError, match=r"Timer\(interval='batch'\) is not valid"):
        Timer(interval="batch")


class Nested(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(10, 100), nn.ReLU(), nn.Linear(100, 10))
        self.head = nn.Linear(10, 1)
        self.head.requires_grad_(False)
        self.norm = nn.BatchNorm1d(10).eval()


def test_model_summary_table_and_totals():
    lines = summarize(Nested()).splitlines()
    assert lines[:6] == ["  | Name    | Type        | Params | Mode ", "-" * 45,
                         "0 | encoder | Sequential  | 2.1 K  | train",
                         "1 | head    | Linear      | 11     | train",
                         "2 | norm    | BatchNorm1d | 20     | eval ", "-" * 45]
    assert lines[6:] == ["2.1 K     Trainable params", "11        Non-trainable params", "2.1 K     Total params",
                         "0.009     Total estimated model params size (MB)", "5         Modules in train mode",
                         "1         Modules in eval mode"]
    deep = summarize(Nested(), max_depth=-1).splitlines()
    assert [line.split(" | ")[1].strip() for line in deep[2:8]] == ["encoder", "encoder.0", "encoder.1", "encoder.2",
                                                                     "head", "norm"]
    assert human_readable_count(999) == "999" and human_readable_count(1_234_567) == "1.2 M"


def test_default_model_summary_prints_at_fit_start_and_max_depth_zero_prints_nothing(capsys):
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        max_epochs=1, limit_val_batches=0)
    trainer.fit(Regression(), loader())
    assert capsys.readouterr().out.splitlines()[2] == "0 | layer | Linear | 5      | train"
    make_trainer(max_epochs=1, callbacks=[ModelSummary(max_depth=0)], limit_val_batches=0).fit(Regression(), loader())
    assert capsys.readouterr().out == ""
    with pytest.raises(ValueError, match=r"ModelSummary\(max_depth=-2\) is not valid"):
        ModelSummary(max_depth=-2)
