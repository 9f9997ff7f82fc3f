"""self.log semantics: per-hook on_step/on_epoch defaults, reductions, batch-size weighting, prog_bar / logger
routing, log_every_n_steps and the steps loggers receive — expected values recorded from Lightning 2.6 running the
same module."""
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import loops as L
from tests.helpers.loops import Regression, loader, make_trainer


class ListLogger:
    def __init__(self):
        self.calls = []
        self.saves = 0

    def log_metrics(self, metrics, step):
        self.calls.append((step, dict(sorted(metrics.items()))))

    def save(self):
        self.saves += 1


class Logs(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        self.log("a", float(batch_idx))
        self.log("b", float(batch_idx), on_epoch=True)
        self.log("c", float(batch_idx), reduce_fx="max", on_epoch=True, on_step=False)
        self.log("d", float(batch_idx), prog_bar=True, logger=False)
        return self.layer(batch[0]).sum()

    def on_train_epoch_end(self):
        self.log("e", 5.0)

    def validation_step(self, batch, batch_idx):
        self.log("v", batch[0][:, 0].mean())
        self.log("vs", 1.0, reduce_fx="sum", prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _rounded(metrics):
    return {k: round(float(v), 4) for k, v in sorted(metrics.items())}


def test_log_semantics_match_lightning():
    data = DataLoader(TensorDataset(torch.arange(60.0).reshape(30, 2)), batch_size=4)  # last batch holds 2
    logger = ListLogger()
    trainer = make_trainer(max_epochs=2, logger=logger, log_every_n_steps=3, num_sanity_val_steps=0)
    trainer.fit(Logs(), data, data)
    assert _rounded(trainer.callback_metrics) == {"a": 7.0, "b": 3.2667, "b_epoch": 3.2667, "b_step": 7.0,
                                                  "c": 7.0, "d": 7.0, "e": 5.0, "v": 29.0, "vs": 8.0}
    assert _rounded(trainer.logged_metrics) == {"a": 7.0, "b_epoch": 3.2667, "b_step": 7.0, "c": 7.0, "e": 5.0,
                                                "v": 29.0, "vs": 8.0}
    assert _rounded(trainer.progress_bar_metrics) == {"d": 7.0, "vs": 8.0}
    b_epoch = pytest.approx(3.2667, abs=1e-4)
    assert logger.calls == [
        (2, {"a": 2.0, "b_step": 2.0, "epoch": 0}), (5, {"a": 5.0, "b_step": 5.0, "epoch": 0}),
        (7, {"epoch": 0, "v": 29.0, "vs": 8.0}), (7, {"b_epoch": b_epoch, "c": 7.0, "e": 5.0, "epoch": 0}),
        (8, {"a": 0.0, "b_step": 0.0, "epoch": 1}), (11, {"a": 3.0, "b_step": 3.0, "epoch": 1}),
        (14, {"a": 6.0, "b_step": 6.0, "epoch": 1}), (15, {"epoch": 1, "v": 29.0, "vs": 8.0}),
        (15, {"b_epoch": b_epoch, "c": 7.0, "e": 5.0, "epoch": 1})]
    assert logger.saves == len(logger.calls) + 1  # and once after the hyperparameters at fit start, as Lightning
    # v: the mean of column 0 weighted by batch size (the last batch holds 2 samples) = mean of 0, 2, ..., 58
    assert trainer.validate(Logs(), data, verbose=False) == [{"v": 29.0, "vs": 8.0}]


def test_explicit_batch_size_weights_the_mean():
    class Model(Regression):
        def validation_step(self, batch, batch_idx):
            self.log("w", float(batch_idx), batch_size=1 if batch_idx == 0 else 3)

    result = make_trainer().validate(Model(), loader(n=8, batch_size=4), verbose=False)
    assert result == [{"w": pytest.approx(0.75)}]  # (0 * 1 + 1 * 3) / 4


def test_log_dict_and_reduce_fx_sum_min():
    class Model(Regression):
        def test_step(self, batch, batch_idx):
            self.log_dict({"s": 1.0, "n": float(batch_idx)}, reduce_fx="sum")
            self.log("lo", float(batch_idx), reduce_fx=torch.min)

    assert make_trainer().test(Model(), loader(n=16), verbose=False) == [{"s": 4.0, "n": 6.0, "lo": 0.0}]


def test_metric_object_is_computed_at_epoch_end():
    class Mean:
        def __init__(self):
            self.values = []

        def __call__(self, value):
            self.values.append(value)
            self._forward_cache = torch.tensor(value)
            return self._forward_cache

        def compute(self):
            return torch.tensor(sum(self.values) / len(self.values))

        def reset(self):
            self.values = []

    class Model(Regression):
        def __init__(self):
            super().__init__()
            self.metric = Mean()

        def test_step(self, batch, batch_idx):
            self.metric(float(batch_idx))
            self.log("m", self.metric)

    model = Model()
    assert make_trainer().test(model, loader(n=12), verbose=False) == [{"m": 1.0}]
    assert model.metric.values == []


def test_torchmetrics_metric_logged_per_step_and_computed_per_epoch():
    torchmetrics = pytest.importorskip("torchmetrics")
    seen, by_hand = [], []

    class Model(Regression):
        def __init__(self):
            super().__init__()
            self.error = torchmetrics.MeanAbsoluteError()

        def training_step(self, batch, batch_idx):
            seen.append(self.trainer.callback_metrics.get("mae_step"))  # the previous batch's step value
            x, y = batch
            by_hand.append((self(x) - y).abs().mean().item())
            self.error(self(x), y)
            self.log("mae", self.error, on_step=True, on_epoch=True)
            return self.loss(batch)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)  # frozen: the epoch value can be recomputed

    model = Model()
    trainer = make_trainer(max_epochs=2, limit_val_batches=0)
    trainer.fit(model, loader(n=10, batch_size=4))  # batches of 4, 4 and 2: a mean of batch means would differ
    x, y = loader(n=10).dataset.tensors
    with torch.no_grad():
        expected = (model(x) - y).abs().mean().item()
    assert trainer.callback_metrics["mae_epoch"].item() == pytest.approx(expected, rel=1e-5)
    assert expected != pytest.approx(sum(by_hand[:3]) / 3, rel=1e-3)
    assert [v.item() for v in seen[1:]] == pytest.approx(by_hand[:-1], rel=1e-5)  # step value: the batch's
    assert model.error.total == 0  # reset once its epoch was computed


def test_train_batch_end_hooks_see_this_steps_values():
    seen = []

    class Model(Regression):
        def training_step(self, batch, batch_idx):
            self.log("batch", float(batch_idx))
            return super().training_step(batch, batch_idx)

    class Reader(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append(trainer.callback_metrics["batch"].item())

    make_trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=0, callbacks=[Reader()]).fit(Model(), loader())
    assert seen == [0.0, 1.0, 2.0]  # as Lightning, whose callback_metrics include the running step


def test_multiple_eval_dataloaders_suffix_keys():
    class Model(Regression):
        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            self.log("x", float(dataloader_idx))

    result = make_trainer().validate(Model(), [loader(n=8), loader(n=4)], verbose=False)
    assert result == [{"x/dataloader_idx_0": 0.0}, {"x/dataloader_idx_1": 1.0}]


def test_log_errors_name_the_problem():
    class Vector(Regression):
        def test_step(self, batch, batch_idx):
            self.log("v", torch.ones(3))

    with pytest.raises(ValueError, match=r"'v'.*shape \(3,\)"):
        make_trainer().test(Vector(), loader(), verbose=False)

    class Outside(Regression):
        def on_fit_start(self):
            self.log("x", 1.0)

    with pytest.raises(RuntimeError, match="outside the hooks that can log"):
        make_trainer(max_epochs=1).fit(Outside(), loader())

    with pytest.raises(ValueError, match="reduce_fx='median'"):
        class Median(Regression):
            def test_step(self, batch, batch_idx):
                self.log("m", 1.0, reduce_fx="median")

        make_trainer().test(Median(), loader(), verbose=False)


def test_results_table_is_printed(capsys):
    make_trainer().test(Regression(), loader())
    out = capsys.readouterr().out
    assert "Test metric" in out and "test_loss" in out and "DataLoader 0" in out


class LogsInBatchTransfer(Regression):
    def on_before_batch_transfer(self, batch, dataloader_idx):
        self.log("x", 1.0)
        return batch


class LogsInSchedulerStep(Regression):
    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 1),
                                                         "interval": "step"}}

    def lr_scheduler_step(self, scheduler, metric):
        self.log("x", 1.0)


@pytest.mark.parametrize(("model", "hook"), [(LogsInBatchTransfer, "on_before_batch_transfer"),
                                             (LogsInSchedulerStep, "lr_scheduler_step")])
def test_self_log_is_refused_in_a_hook_called_inside_the_training_batches(model, hook):
    """The training batches log per step, but not from the hooks Lightning refuses there: the dispatcher records
    the running hook, so the refusal names it."""
    with pytest.raises(RuntimeError, match=rf"self.log\('x'\) was called in {hook}, outside the hooks that can log"):
        make_trainer(max_epochs=1).fit(model(), loader())


def test_self_log_in_predict_names_the_step_and_outside_a_run_says_so():
    class LogsInPredict(Regression):
        def predict_step(self, batch, batch_idx, dataloader_idx=0):
            self.log("x", 1.0)

    with pytest.raises(RuntimeError, match=r"self.log\('x'\) was called in predict_step,"):
        make_trainer().predict(LogsInPredict(), loader())
    model = Regression()
    make_trainer(max_epochs=1).fit(model, loader())
    with pytest.raises(RuntimeError, match=r"self.log\('x'\) was called in no hook of the Trainer,"):
        model.log("x", 1.0)


def test_helpers_and_callbacks_log_within_the_hooks_that_may():
    """A helper the step calls logs as the step (per step); a callback's epoch hook logs per epoch."""
    class LogsInHelper(Regression):
        def training_step(self, batch, batch_idx):
            self.record(batch_idx)
            return super().training_step(batch, batch_idx)

        def record(self, batch_idx):
            self.log("helper", float(batch_idx))

    class LogsAtEpochEnd(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            pl_module.log("callback", 2.0)

    trainer = make_trainer(max_epochs=1, callbacks=[LogsAtEpochEnd()])
    trainer.fit(LogsInHelper(), loader(n=8))
    assert trainer.callback_metrics["helper"].item() == 1.0  # the last step's value: logged per step
    assert trainer.callback_metrics["callback"].item() == 2.0
    assert "helper_epoch" not in trainer.callback_metrics and "callback_step" not in trainer.callback_metrics
