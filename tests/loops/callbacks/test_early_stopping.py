"""EarlyStopping on real fits: each stopping rule stops at the right epoch with Lightning's reason, min_delta,
strict / non-strict missing metrics, checks after each validation when validating several times an epoch, and
its state surviving a checkpoint."""
import math

import pytest

from loops.callbacks import EarlyStopping, ModelCheckpoint
from loops.callbacks.early_stopping import EarlyStoppingReason
from tests.helpers.loops import Regression, loader, make_trainer


class Scripted(Regression):
    """Logs val_loss = scores[number of validations so far] (the last score repeats)."""

    def __init__(self, scores):
        super().__init__()
        self.scores, self.validations = scores, 0

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.scores[min(self.validations, len(self.scores) - 1)])

    def on_validation_epoch_end(self):
        self.validations += not self.trainer.sanity_checking


def _fit(stopper, scores, max_epochs=10, **kwargs):
    trainer = make_trainer(max_epochs=max_epochs, callbacks=[stopper], num_sanity_val_steps=0, **kwargs)
    trainer.fit(Scripted(scores), loader(), loader(n=8))
    return trainer


@pytest.mark.parametrize("kwargs, scores, stopped_epoch, reason, message", [
    (dict(stopping_threshold=1.0), [5.0, 3.0, 0.5, 0.1], 2, EarlyStoppingReason.STOPPING_THRESHOLD,
     "Stopping threshold reached: val_loss = 0.5 < 1.0. Signaling Trainer to stop."),
    (dict(divergence_threshold=10.0), [5.0, 4.0, 20.0], 2, EarlyStoppingReason.DIVERGENCE_THRESHOLD,
     "Divergence threshold reached: val_loss = 20.0 < 10.0. Signaling Trainer to stop."),
    (dict(), [5.0, math.nan], 1, EarlyStoppingReason.NON_FINITE_METRIC,
     "Monitored metric val_loss = nan is not finite. Previous best value was 5.000. Signaling Trainer to stop."),
    (dict(patience=2), [5.0, 4.0, 4.5, 4.2, 1.0], 3, EarlyStoppingReason.PATIENCE_EXHAUSTED,
     "Monitored metric val_loss did not improve in the last 2 records. Best score: 4.000. Signaling Trainer to stop."),
    (dict(patience=2, min_delta=0.1), [5.0, 4.95, 4.9, 1.0], 2, EarlyStoppingReason.PATIENCE_EXHAUSTED,
     "Monitored metric val_loss did not improve in the last 2 records. Best score: 5.000. Signaling Trainer to stop."),
])
def test_each_rule_stops_at_the_right_epoch(capsys, kwargs, scores, stopped_epoch, reason, message):
    stopper = EarlyStopping(monitor="val_loss", verbose=True, **kwargs)
    trainer = _fit(stopper, scores)
    assert stopper.stopped_epoch == stopped_epoch and trainer.current_epoch == stopped_epoch + 1
    assert stopper.stopping_reason is reason and stopper.stopping_reason_message == message
    assert capsys.readouterr().out.splitlines()[-1] == message


def test_divergence_in_max_mode_and_improvement_messages(capsys):
    stopper = EarlyStopping(monitor="val_loss", mode="max", divergence_threshold=0.0, verbose=True)
    _fit(stopper, [1.0, 2.0, -1.0])
    assert capsys.readouterr().out.splitlines() == [
        "Metric val_loss improved. New best score: 1.000",
        "Metric val_loss improved by 1.000 >= min_delta = 0.0. New best score: 2.000",
        "Divergence threshold reached: val_loss = -1.0 > 0.0. Signaling Trainer to stop."]


def test_missing_metric_strict_or_not():
    with pytest.raises(RuntimeError, match=r"monitor='val_acc'.*\['train_loss', 'val_loss'\].*strict=False"):
        _fit(EarlyStopping(monitor="val_acc"), [1.0], max_epochs=1)
    trainer = _fit(EarlyStopping(monitor="val_acc", strict=False), [1.0], max_epochs=3)
    assert trainer.current_epoch == 3


def test_checks_after_each_validation_when_validating_twice_an_epoch():
    stopper = EarlyStopping(monitor="val_loss", patience=1)
    trainer = _fit(stopper, [3.0, 2.0, 2.5, 1.0], val_check_interval=0.5)
    # validations after steps 4, 8, 12: the third does not improve, so the run stops there, within epoch 1
    assert stopper.wait_count == 1 and stopper.stopped_epoch == 1 and trainer.current_epoch == 2
    assert trainer.global_step == 12


def test_state_survives_a_checkpoint(tmp_path):
    stopper = EarlyStopping(monitor="val_loss", patience=3)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = make_trainer(max_epochs=3, callbacks=[stopper, checkpoint], num_sanity_val_steps=0)
    trainer.fit(Scripted([1.0, 2.0, 2.0]), loader(), loader(n=8))
    assert stopper.wait_count == 2 and not trainer.should_stop
    resumed = EarlyStopping(monitor="val_loss", patience=3)
    trainer = make_trainer(max_epochs=10, callbacks=[resumed, ModelCheckpoint(dirpath=tmp_path)],
                           num_sanity_val_steps=0)
    trainer.fit(Scripted([2.0]), loader(), loader(n=8), ckpt_path=str(tmp_path / "last.ckpt"))
    assert resumed.best_score.item() == 1.0 and resumed.stopped_epoch == 3 and trainer.current_epoch == 4


@pytest.mark.parametrize("kwargs, message", [(dict(mode="low"), r"mode='low'\) is not valid"),
                                             (dict(patience=-1), r"patience=-1\) is not valid")])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EarlyStopping(monitor="val_loss", **kwargs)


class RankScripted(Regression):
    """Rank 0 improves every epoch; rank 1 never does (values are not synced, so each rank judges its own)."""

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", 10.0 - self.current_epoch if self.global_rank == 0 else 5.0)


def test_one_process_stopping_stops_all(clean_env):
    stopper = EarlyStopping(monitor="val_loss", patience=1)
    trainer = make_trainer(devices=2, strategy="ddp_spawn", max_epochs=10, callbacks=[stopper],
                           num_sanity_val_steps=0)
    trainer.fit(RankScripted(), loader(n=16), loader(n=8))
    assert trainer.current_epoch == 2  # rank 1 stops after epoch 1 and takes rank 0 with it
