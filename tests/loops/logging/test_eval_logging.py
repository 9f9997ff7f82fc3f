"""self.log in validation and test, run on Lightning 2.6 and on loops (`both`): per-step values reach the loggers as
`name_step` at each loader's own batch count, `validate()` / `test()` return what the loggers got (`name_epoch`,
the "/dataloader_idx_N" suffix after it, no `logger=False` keys), callbacks log too, and the reductions
`reduce_fx` accepts."""
import importlib

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from tests.helpers.both_trainers import QUIET, both, quiet  # noqa: F401  (quiet: a fixture used below)

pytestmark = pytest.mark.usefixtures("quiet")


def recorder(L):
    class Recorder(importlib.import_module(f"{L.__name__}.loggers").Logger):
        def __init__(self):
            super().__init__()
            self.rows = []

        name, version = "rows", 0

        def log_hyperparams(self, *args, **kwargs):
            pass

        def log_metrics(self, metrics, step=None):
            self.rows.append((step, dict(sorted(metrics.items()))))

    return Recorder()


def logging_module(L, loaders):
    class LogsInEvaluation(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def train_dataloader(self):
            return DataLoader(TensorDataset(torch.ones(4, 2)), batch_size=2)

        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            self.log("both", float(batch_idx), on_step=True, on_epoch=True)
            self.log("step_only", float(batch_idx), on_step=True, on_epoch=False)
            self.log("epoch_only", float(batch_idx))
            self.log("unlogged", float(batch_idx), logger=False)

        test_step = validation_step

        def val_dataloader(self):
            data = TensorDataset(torch.ones(8, 2))
            found = [DataLoader(data, batch_size=2), DataLoader(data, batch_size=4)]
            return found[:loaders] if loaders > 1 else found[0]

        test_dataloader = val_dataloader

    return LogsInEvaluation()


def callback(L):
    class LogsFromCallback(L.Callback):
        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            pl_module.log("from_callback", float(batch_idx))

        def on_train_epoch_end(self, trainer, pl_module):
            pl_module.log("from_train_epoch_end", 3.0)

    return LogsFromCallback()


def steps(rows, *names):
    return [(step, {k: v for k, v in metrics.items() if k in names}) for step, metrics in rows
            if any(k in names for k in metrics)]


@both
def test_one_loader_step_and_epoch_keys(L):
    logger = recorder(L)
    trainer = L.Trainer(**{**QUIET, "logger": logger}, max_epochs=1, num_sanity_val_steps=0, log_every_n_steps=1,
                        callbacks=[callback(L)])
    model = logging_module(L, 1)
    trainer.fit(model)
    assert steps(logger.rows, "both_step", "step_only") == [
        (i, {"both_step": float(i), "step_only": float(i)}) for i in range(4)]  # the loader's batch count, no epoch
    assert logger.rows[4] == (1, {"both_epoch": 1.5, "epoch": 0, "epoch_only": 1.5, "from_callback": 1.5})
    assert logger.rows[5] == (1, {"epoch": 0, "from_train_epoch_end": 3.0})
    # Evaluation's step values are not callback metrics; the unsuffixed epoch value is.
    assert sorted(trainer.callback_metrics) == ["both", "both_epoch", "epoch_only", "from_callback",
                                                "from_train_epoch_end", "unlogged"]
    logger.rows.clear()
    assert trainer.validate(model, verbose=False) == [{"both_epoch": 1.5, "epoch_only": 1.5, "from_callback": 1.5}]
    assert [step for step, _ in logger.rows] == [0, 1, 2, 3, 2]  # counted again from 0 in each stage call
    assert trainer.test(model, verbose=False) == [{"both_epoch": 1.5, "epoch_only": 1.5}]
    assert trainer.logged_metrics["both_step"] == 3.0


@both
def test_two_loaders_put_the_suffix_after_step_and_epoch(L):
    logger = recorder(L)
    trainer = L.Trainer(**{**QUIET, "logger": logger}, max_epochs=1, num_sanity_val_steps=0, log_every_n_steps=1)
    model = logging_module(L, 2)
    results = trainer.validate(model, verbose=False)
    assert results == [{"both_epoch/dataloader_idx_0": 1.5, "epoch_only/dataloader_idx_0": 1.5},
                       {"both_epoch/dataloader_idx_1": 0.5, "epoch_only/dataloader_idx_1": 0.5}]
    # Each loader's steps carry its own keys only, counted from 0.
    assert logger.rows[4:6] == [(0, {"both_step/dataloader_idx_1": 0.0, "step_only/dataloader_idx_1": 0.0}),
                                (1, {"both_step/dataloader_idx_1": 1.0, "step_only/dataloader_idx_1": 1.0})]
    assert sorted(trainer.callback_metrics) == [
        "both/dataloader_idx_0", "both/dataloader_idx_1", "both_epoch/dataloader_idx_0", "both_epoch/dataloader_idx_1",
        "epoch_only/dataloader_idx_0", "epoch_only/dataloader_idx_1", "unlogged/dataloader_idx_0",
        "unlogged/dataloader_idx_1"]
    assert trainer.test(model, verbose=False)[1] == results[1]


@both
def test_results_without_a_logger(L):
    trainer = L.Trainer(**QUIET, limit_val_batches=3)
    assert trainer.validate(logging_module(L, 1), verbose=False) == [{"both_epoch": 1.0, "epoch_only": 1.0}]
    assert sorted(trainer.logged_metrics) == ["both_epoch", "both_step", "epoch_only", "step_only"]


def logs_batch_idx(L, reduce_fx):
    """A module whose validation logs each batch's index (0, 1, 2) as "value", reduced by `reduce_fx`."""
    class Reduces(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def validation_step(self, batch, batch_idx):
            self.log("value", float(batch_idx), reduce_fx=reduce_fx)

        def val_dataloader(self):
            return DataLoader(TensorDataset(torch.ones(3, 2)))

    return Reduces()


@both
@pytest.mark.parametrize(("reduce_fx", "expected"), [(max, 2.0), (sum, 3.0), (min, 0.0), (torch.max, 2.0),
                                                     ("AVG", 1.0)], ids=["max", "sum", "min", "torch.max", "AVG"])
def test_reduce_fx_accepted(L, reduce_fx, expected):
    assert L.Trainer(**QUIET).validate(logs_batch_idx(L, reduce_fx), verbose=False) == [{"value": expected}]


@both
@pytest.mark.parametrize("reduce_fx", [lambda values: values.max(), torch.median, "median"],
                         ids=["lambda", "torch.median", "median"])
def test_other_reductions_refused(L, reduce_fx):
    with pytest.raises(Exception, match="reduce_fx") as raised:
        L.Trainer(**QUIET).validate(logs_batch_idx(L, reduce_fx), verbose=False)
    assert "torchmetrics" in str(raised.value)
