"""Results that used to come out wrong without an error, each run the same way on Lightning 2.6 and on loops
(`both`): the two must agree, and the expected value is written out too, so the test fails if both change."""

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset

import loops
from loops.callbacks import BasePredictionWriter
from tests.helpers.both_trainers import QUIET, both, pl, quiet  # noqa: F401  (quiet: a fixture used below)

pytestmark = pytest.mark.usefixtures("quiet")


def module_class(L):
    class Model(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer, self.norm = torch.nn.Linear(2, 1), torch.nn.BatchNorm1d(1)
            self.trained = 0

        def forward(self, x):
            return self.norm(self.layer(x))

        def training_step(self, batch, batch_idx):
            self.trained += 1
            return self(batch).sum()

        def validation_step(self, batch, batch_idx):
            pass

        def predict_step(self, batch, batch_idx):
            return self(batch)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return Model


def data(n=8, batch_size=2):
    return DataLoader(torch.randn(n, 2), batch_size=batch_size)


@both
def test_a_submodule_put_in_eval_mode_stays_in_eval_mode_after_validation(L):
    class Frozen(module_class(L)):
        def on_fit_start(self):
            self.norm.eval()

        def on_train_epoch_end(self):
            self.modes = (self.training, self.norm.training)

    model = Frozen()
    L.Trainer(max_epochs=1, **QUIET).fit(model, data(), data(4))
    assert model.modes == (True, False)


@both
def test_an_overridden_model_train_hook_decides_the_modes(L):
    class AllTrain(module_class(L)):
        def on_fit_start(self):
            self.norm.eval()

        def on_validation_model_train(self):
            self.train()

        def on_train_epoch_end(self):
            self.modes = (self.training, self.norm.training)

    model = AllTrain()
    L.Trainer(max_epochs=1, **QUIET).fit(model, data(), data(4))
    assert model.modes == (True, True)


@both
@pytest.mark.parametrize("limit", [0, 0.0])
def test_limit_train_batches_zero_trains_nothing(L, limit):
    model = module_class(L)()
    trainer = L.Trainer(max_epochs=2, limit_train_batches=limit, **QUIET)
    trainer.fit(model, data(), data(4))
    assert (model.trained, trainer.global_step, trainer.current_epoch) == (0, 0, 0)


@both
@pytest.mark.parametrize(("epoch_batches", "accumulate"), [(5, 1), (4, 2)])
def test_integer_val_check_interval_counts_batches_across_epochs(L, epoch_batches, accumulate):
    class Model(module_class(L)):
        validated_after = []

        def validation_step(self, batch, batch_idx):
            if batch_idx == 0:
                self.validated_after.append(self.trained)

    model = Model()
    trainer = L.Trainer(max_epochs=3, val_check_interval=3, check_val_every_n_epoch=None, num_sanity_val_steps=0,
                        accumulate_grad_batches=accumulate, **QUIET)
    trainer.fit(model, data(2 * epoch_batches), data(4))
    assert model.validated_after == list(range(3, 3 * epoch_batches + 1, 3))


@both
@pytest.mark.parametrize(("max_steps", "lr"), [(3, 1.0), (4, 0.5), (6, 0.5), (8, 0.25)])
def test_an_epoch_scheduler_steps_only_after_complete_epochs(L, max_steps, lr):
    class Scheduled(module_class(L)):
        def configure_optimizers(self):
            optimizer = torch.optim.SGD(self.parameters(), lr=1.0)
            return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, 1, 0.5)]

    trainer = L.Trainer(max_steps=max_steps, **QUIET)
    trainer.fit(Scheduled(), data())  # 4 batches an epoch
    assert trainer.optimizers[0].param_groups[0]["lr"] == lr


@both
def test_64_true_predictions_are_float64(L):
    predictions = L.Trainer(precision="64-true", **QUIET).predict(module_class(L)(), data(4))
    assert [p.dtype for p in predictions] == [torch.float64, torch.float64]


class Five(IterableDataset):
    def __iter__(self):
        return iter(torch.randn(5, 2))


@both
def test_a_prediction_writer_over_an_iterable_dataset_stops(L):
    base = BasePredictionWriter if L is loops else pl.callbacks.BasePredictionWriter

    class Writer(base):
        def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, loader_idx):
            self.batches = getattr(self, "batches", 0) + 1

        def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices):
            self.epoch = len(predictions)

    writer = Writer("batch_and_epoch")
    result = L.Trainer(callbacks=[writer], **QUIET).predict(module_class(L)(), DataLoader(Five()),
                                                             return_predictions=False)
    assert (writer.batches, writer.epoch, result) == (5, 5, None)
