"""EMAWeightAveraging / WeightAveraging on real CPU fits: the final weights are the exponential moving average of
the per-step weights (computed here independently), validation runs on the average, and resume is exact."""
import pytest
import torch

import loops as L
from loops.callbacks import EMAWeightAveraging, WeightAveraging
from tests.helpers.loops import Regression, loader, make_trainer


class StepRecorder(L.Callback):
    """Weights after every optimizer step, weights seen by validation, and weights at each epoch end."""

    def __init__(self):
        self.steps, self.validated, self.epoch_ends = [], [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps.append(_flat(pl_module))

    def on_validation_epoch_start(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.validated.append(_flat(pl_module))

    def on_train_epoch_end(self, trainer, pl_module):
        self.epoch_ends.append(_flat(pl_module))


def _flat(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()


def _ema(weights, decay):
    average = weights[0]
    for current in weights[1:]:
        average = decay * average + (1 - decay) * current
    return average


def _fit(averaging, epochs=2, **kwargs):
    torch.manual_seed(0)
    model = Regression()
    recorder = StepRecorder()
    trainer = make_trainer(max_epochs=epochs, callbacks=[averaging, recorder], **kwargs)
    trainer.fit(model, loader(32), loader(8, seed=1))
    return model, recorder


def test_final_weights_are_the_ema_of_every_step_and_validation_sees_the_average():
    model, recorder = _fit(EMAWeightAveraging(decay=0.9))
    assert len(recorder.steps) == 16
    torch.testing.assert_close(_flat(model), _ema(recorder.steps, 0.9))
    torch.testing.assert_close(recorder.validated[0], _ema(recorder.steps[:8], 0.9))
    # after validation the training weights are back
    torch.testing.assert_close(recorder.epoch_ends[0], recorder.steps[7])


def test_update_schedule_by_step_and_by_epoch():
    model, recorder = _fit(EMAWeightAveraging(decay=0.5, update_every_n_steps=3, update_starting_at_step=4))
    picked = [recorder.steps[i] for i in range(16) if i >= 4 and i % 3 == 0]  # step_idx 6, 9, 12, 15 ... from 4
    torch.testing.assert_close(_flat(model), _ema(picked, 0.5))

    model, recorder = _fit(EMAWeightAveraging(decay=0.5, update_every_n_steps=0, update_starting_at_epoch=1),
                           epochs=3)
    torch.testing.assert_close(_flat(model), _ema(recorder.epoch_ends[1:], 0.5))


def test_plain_weight_averaging_is_the_mean_and_honours_should_update():
    class EveryOtherStep(WeightAveraging):
        def should_update(self, step_idx=None, epoch_idx=None):
            return step_idx is not None and step_idx % 2 == 1

    model, recorder = _fit(EveryOtherStep())
    torch.testing.assert_close(_flat(model), torch.stack(recorder.steps[1::2]).mean(0))


class SaveAtStep(L.Callback):
    def __init__(self, step, path):
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)


def test_resume_continues_the_average(tmp_path):
    path = str(tmp_path / "step5.ckpt")
    torch.manual_seed(0)
    model = Regression()
    trainer = make_trainer(max_epochs=2, callbacks=[EMAWeightAveraging(decay=0.8), SaveAtStep(5, path)])
    trainer.fit(model, loader(32))
    torch.manual_seed(0)
    resumed = Regression()
    trainer = make_trainer(max_epochs=2, callbacks=[EMAWeightAveraging(decay=0.8)])
    trainer.fit(resumed, loader(32), ckpt_path=path)
    torch.testing.assert_close(_flat(resumed), _flat(model))


def test_bad_decay_is_explained():
    with pytest.raises(ValueError, match="decay=1.5"):
        EMAWeightAveraging(decay=1.5)


def test_checkpoints_hold_the_average_for_loading_and_the_training_weights_for_resuming(tmp_path):
    path = str(tmp_path / "step5.ckpt")
    torch.manual_seed(0)
    model = Regression()
    recorder = StepRecorder()
    trainer = make_trainer(max_epochs=1, callbacks=[EMAWeightAveraging(decay=0.8), recorder, SaveAtStep(5, path)])
    trainer.fit(model, loader(32))
    loaded = Regression.load_from_checkpoint(path)
    torch.testing.assert_close(_flat(loaded), _ema(recorder.steps[:5], 0.8))
    checkpoint = trainer.fabric.load(path)
    current = torch.cat([v.flatten() for v in checkpoint["current_model_state"].values()])
    torch.testing.assert_close(current, recorder.steps[4])
    assert checkpoint["averaging_state"]["n_averaged"].item() == 5
