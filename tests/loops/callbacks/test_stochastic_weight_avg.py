"""StochasticWeightAveraging on a real CPU fit: the final weights are the mean of the per-epoch weights from
swa_epoch_start on, the learning rate anneals to swa_lrs, and BatchNorm statistics are recomputed for the average."""
import pytest
import torch
from torch import nn

import loops as L
from loops.callbacks import StochasticWeightAveraging
from tests.helpers.loops import Regression, loader, make_trainer


class WithBatchNorm(Regression):
    def __init__(self):
        super().__init__(lr=0.1)
        self.layer = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))


class EpochRecorder(L.Callback):
    """Weights at each epoch's end (before SWA touches them: it must come first in the callback list) and the
    learning rate each epoch trains with."""

    def __init__(self):
        self.weights, self.lrs = [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_epoch_end(self, trainer, pl_module):
        self.weights.append([p.detach().clone() for p in pl_module.parameters()])


def _fit(model, swa, epochs=4):
    recorder = EpochRecorder()
    trainer = make_trainer(max_epochs=epochs, callbacks=[recorder, swa])
    trainer.fit(model, loader(32, batch_size=8), loader(16, batch_size=8, seed=1))
    return recorder, trainer


def test_final_weights_are_the_average_of_the_swa_epochs_and_batch_norm_matches_them():
    torch.manual_seed(0)
    model = WithBatchNorm()
    recorder, _ = _fit(model, StochasticWeightAveraging(swa_lrs=0.02, swa_epoch_start=2, annealing_epochs=1))
    # Epochs 2..4 (0-based 1..3) are averaged, computed here independently of the callback.
    expected = [torch.stack(epoch_params).mean(0) for epoch_params in zip(*recorder.weights[1:], strict=False)]
    for param, average in zip(model.parameters(), expected, strict=False):
        torch.testing.assert_close(param.detach(), average)
    assert recorder.lrs == pytest.approx([0.1, 0.1, 0.02, 0.02])  # annealed to swa_lrs in one epoch

    linear, batch_norm = model.layer[0], model.layer[1]
    with torch.no_grad():
        activations = [linear(x) for x, _ in loader(32, batch_size=8)]
    torch.testing.assert_close(batch_norm.running_mean, torch.stack([a.mean(0) for a in activations]).mean(0))
    torch.testing.assert_close(batch_norm.running_var, torch.stack([a.var(0) for a in activations]).mean(0))
    assert batch_norm.momentum == 0.1  # restored after the statistics pass


def test_fractional_start_and_a_user_scheduler_is_replaced():
    class WithScheduler(Regression):
        def configure_optimizers(self):
            optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
            return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)]

    torch.manual_seed(0)
    model = WithScheduler()
    recorder, trainer = _fit(model, StochasticWeightAveraging(swa_lrs=0.3, swa_epoch_start=0.5, annealing_epochs=0))
    # SWA from epoch 2 of 4 (1-based); without annealing its learning rate applies at once, StepLR no longer steps.
    assert recorder.lrs == pytest.approx([0.1, 0.3, 0.3, 0.3])
    assert [type(c.scheduler).__name__ for c in trainer.lr_scheduler_configs] == ["SWALR"]
    expected = [torch.stack(epoch_params).mean(0) for epoch_params in zip(*recorder.weights[1:], strict=False)]
    for param, average in zip(model.parameters(), expected, strict=False):
        torch.testing.assert_close(param.detach(), average)


def test_stopping_before_the_last_epoch_still_takes_the_average():
    torch.manual_seed(0)
    model = Regression()
    recorder = EpochRecorder()
    trainer = make_trainer(max_epochs=10, max_steps=12, callbacks=[recorder, StochasticWeightAveraging(0.05, 2)])
    trainer.fit(model, loader(32, batch_size=8))
    assert trainer.current_epoch == 3
    expected = [torch.stack(epoch_params).mean(0) for epoch_params in zip(*recorder.weights[1:], strict=False)]
    for param, average in zip(model.parameters(), expected, strict=False):
        torch.testing.assert_close(param.detach(), average)


@pytest.mark.parametrize("kwargs, match", [
    (dict(swa_lrs=-1.0), "swa_lrs=-1.0"), (dict(swa_lrs="x"), "swa_lrs='x'"),
    (dict(swa_lrs=0.1, swa_epoch_start=0), "swa_epoch_start=0"),
    (dict(swa_lrs=0.1, swa_epoch_start=1.5), "swa_epoch_start=1.5"),
    (dict(swa_lrs=0.1, annealing_strategy="step"), "annealing_strategy='step'"),
])
def test_bad_arguments_are_explained(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StochasticWeightAveraging(**kwargs)


class SaveAtEpoch(L.Callback):
    monitors_metrics = True  # runs after the other callbacks' epoch end, as checkpoint callbacks do

    def __init__(self, epoch, path):
        self.epoch, self.path = epoch, path

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            trainer.save_checkpoint(self.path)


def test_resuming_inside_the_swa_phase_gives_the_uninterrupted_result(tmp_path):
    def run(callbacks, ckpt_path=None):
        torch.manual_seed(0)
        model = WithBatchNorm()
        swa = StochasticWeightAveraging(swa_lrs=0.02, swa_epoch_start=2, annealing_epochs=2)
        trainer = make_trainer(max_epochs=5, callbacks=[swa, *callbacks])
        trainer.fit(model, loader(32, batch_size=8), ckpt_path=ckpt_path)
        return model

    path = str(tmp_path / "epoch2.ckpt")
    uninterrupted = run([SaveAtEpoch(2, path)])
    resumed = run([], ckpt_path=path)
    for name, value in uninterrupted.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, msg=name)
