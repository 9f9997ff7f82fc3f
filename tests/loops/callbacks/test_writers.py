"""LambdaCallback, BasePredictionWriter and OnExceptionCheckpoint on real runs: the functions run at their hooks,
predictions reach the writer per batch and per epoch with their dataset indices, and a failing fit leaves a
checkpoint it can resume from."""
import os

import pytest
import torch

from fabric_kit.checkpoint import read_checkpoint
from loops.callbacks import BasePredictionWriter, LambdaCallback, OnExceptionCheckpoint
from tests.helpers.loops import Regression, dataset, loader, make_trainer


def test_lambda_callback_runs_its_functions():
    seen = []
    callback = LambdaCallback(on_train_epoch_start=lambda trainer, module: seen.append(("epoch",
                                                                                       trainer.current_epoch)),
                              on_validation_end=lambda trainer, module: seen.append(("val", trainer.sanity_checking)))
    make_trainer(max_epochs=2, callbacks=[callback], num_sanity_val_steps=1).fit(Regression(), loader(), loader(n=8))
    assert seen == [("val", True), ("epoch", 0), ("val", False), ("epoch", 1), ("val", False)]
    with pytest.raises(ValueError, match=r"\['on_epoch_end'\], which are not callback hooks; accepted: .*'setup'"):
        LambdaCallback(on_epoch_end=print)


class Writer(BasePredictionWriter):
    def __init__(self, write_interval):
        super().__init__(write_interval)
        self.batches, self.epochs = [], []

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        self.batches.append((dataloader_idx, batch_idx, batch_indices, prediction.shape[0]))

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices):
        self.epochs.append((predictions, batch_indices))


def test_prediction_writer_per_batch_and_per_epoch():
    model = Regression()
    writer = Writer("batch_and_epoch")
    trainer = make_trainer(callbacks=[writer])
    returned = trainer.predict(model, [loader(n=6, batch_size=4), loader(n=3, batch_size=2)],
                               return_predictions=True)
    assert writer.batches == [(0, 0, [0, 1, 2, 3], 4), (0, 1, [4, 5], 2), (1, 0, [0, 1], 2), (1, 1, [2], 1)]
    (predictions, indices), = writer.epochs
    assert indices == [[[0, 1, 2, 3], [4, 5]], [[0, 1], [2]]]
    assert all(torch.equal(a, b) for mine, theirs in zip(predictions, returned, strict=True)
               for a, b in zip(mine, theirs, strict=True))
    expected = model(dataset(6)[:][0])
    assert torch.allclose(torch.cat(predictions[0]), expected)


def test_prediction_writer_per_epoch_only_gets_a_list_for_one_loader():
    writer = Writer("epoch")
    make_trainer(callbacks=[writer]).predict(Regression(), loader(n=6, batch_size=4), return_predictions=False)
    assert writer.batches == [] and len(writer.epochs) == 1
    predictions, indices = writer.epochs[0]
    assert [p.shape[0] for p in predictions] == [4, 2] and indices == [[[0, 1, 2, 3], [4, 5]]]


def test_prediction_writer_arguments_and_missing_method():
    with pytest.raises(ValueError, match=r"write_interval='step'\) is not valid"):
        BasePredictionWriter("step")
    with pytest.raises(NotImplementedError, match=r"write_interval='batch'\) must implement write_on_batch_end"):
        make_trainer(callbacks=[BasePredictionWriter()]).predict(Regression(), loader(n=4))


class FailsInEpoch(Regression):
    def __init__(self, epoch):
        super().__init__()
        self.fail_in = epoch

    def on_train_epoch_start(self):
        if self.current_epoch == self.fail_in:
            raise KeyboardInterrupt


def test_on_exception_checkpoint_saves_the_failing_state_and_resumes(tmp_path):
    path = tmp_path / "on_exception.ckpt"
    trainer = make_trainer(max_epochs=2, callbacks=[OnExceptionCheckpoint(tmp_path)], limit_val_batches=0)
    with pytest.raises(SystemExit):  # Lightning's graceful shutdown after a KeyboardInterrupt
        trainer.fit(FailsInEpoch(1), loader())
    assert os.path.isfile(path) and read_checkpoint(path)["global_step"] == 8
    resumed = make_trainer(max_epochs=2, callbacks=[OnExceptionCheckpoint(tmp_path)], limit_val_batches=0)
    resumed.fit(FailsInEpoch(-1), loader(), ckpt_path=str(path))
    assert resumed.global_step == 16
    assert not os.path.exists(path)  # a successful fit removes the now stale file
    with pytest.raises(ValueError, match=r"filename=''\) is not valid"):
        OnExceptionCheckpoint(tmp_path, filename="")
