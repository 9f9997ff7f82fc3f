"""The learning-rate range test (Tuner.lr_find and the LearningRateFinder callback) on real CPU fits."""
import sys

import pytest
import torch

import loops as L
from loops.callbacks import LearningRateFinder
from loops.tuner import Tuner
from tests.helpers.loops import Counter, Regression, loader, make_trainer


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_lr_find_sweeps_the_range_and_leaves_model_and_trainer_as_they_were():
    torch.manual_seed(0)
    model = Regression(lr=0.05)
    before = _state(model)
    trainer = make_trainer(max_epochs=1)
    finder = Tuner(trainer).lr_find(model, train_dataloaders=loader(64), min_lr=1e-4, max_lr=0.5, num_training=20,
                                    early_stop_threshold=None, update_attr=False)
    lrs, losses = finder.results["lr"], finder.results["loss"]
    assert len(lrs) == len(losses) == 20  # 16 batches per epoch: the sweep ran into a second epoch
    expected = [1e-4 * (0.5 / 1e-4) ** (i / 19) for i in range(20)]
    assert lrs == pytest.approx(expected, rel=1e-6)
    suggestion = finder.suggestion(skip_begin=2)
    assert 1e-4 <= suggestion <= 0.5 and suggestion in lrs
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert trainer.global_step == 0 and trainer.current_epoch == 0
    assert model.hparams.lr == 0.05
    assert not trainer.callback_metrics  # the trial's logs were discarded


def test_linear_mode_and_early_stop_on_divergence():
    model = Regression()
    trainer = make_trainer(max_epochs=1)
    finder = Tuner(trainer).lr_find(model, train_dataloaders=loader(64), min_lr=1e-3, max_lr=50.0, num_training=40,
                                    mode="linear", update_attr=False)
    lrs = finder.results["lr"]
    assert 2 < len(lrs) < 40  # the loss blew up before the sweep's end
    steps = [b - a for a, b in zip(lrs, lrs[1:], strict=False)]
    assert steps == pytest.approx([(50.0 - 1e-3) / 39] * len(steps), rel=1e-6)


def test_update_attr_sets_the_suggestion_on_module_and_plot_draws_the_curve():
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    model = Regression(lr=0.05)
    finder = Tuner(make_trainer(max_epochs=1)).lr_find(model, train_dataloaders=loader(256, batch_size=16),
                                                       num_training=30, min_lr=1e-4, max_lr=1.0)
    suggestion = finder.suggestion()
    assert suggestion is not None and model.hparams.lr == suggestion
    figure = finder.plot(suggest=True)
    curve, marker = figure.axes[0].lines
    assert list(curve.get_xdata()) == finder.results["lr"] and list(curve.get_ydata()) == finder.results["loss"]
    assert list(marker.get_xdata()) == [suggestion]


def test_plot_without_matplotlib_names_the_install(monkeypatch):
    finder = Tuner(make_trainer(max_epochs=1)).lr_find(Regression(), train_dataloaders=loader(64), num_training=5,
                                                       update_attr=False)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ModuleNotFoundError, match="pip install matplotlib"):
        finder.plot()


def _fit(callbacks):
    torch.manual_seed(1)
    model = Regression(lr=0.02)
    trainer = make_trainer(max_epochs=2, callbacks=callbacks)
    trainer.fit(model, loader(32, shuffle=True))
    return model, trainer


def test_callback_without_update_changes_nothing_about_the_real_run():
    plain, _ = _fit([])
    finder = LearningRateFinder(num_training_steps=12, update_attr=False)
    tuned, trainer = _fit([finder])
    assert len(finder.optimal_lr.results["lr"]) == 12
    assert trainer.global_step == 16  # the trial's steps are not counted
    for name, value in plain.state_dict().items():
        assert torch.equal(value, tuned.state_dict()[name]), name


def test_callback_trains_at_the_suggested_lr():
    finder = LearningRateFinder(num_training_steps=30, min_lr=1e-4, max_lr=1.0)
    model, trainer = _fit([finder])
    suggestion = finder.optimal_lr.suggestion()
    assert model.hparams.lr == suggestion
    assert trainer.optimizers[0].param_groups[0]["lr"] == suggestion


def test_bad_arguments_and_missing_attribute_are_explained():
    with pytest.raises(ValueError, match="mode='cubic'"):
        LearningRateFinder(mode="cubic")
    with pytest.raises(ValueError, match="min_lr=1.0 and max_lr=0.1"):
        LearningRateFinder(min_lr=1.0, max_lr=0.1)

    class NoLr(Regression):
        def __init__(self):
            L.LightningModule.__init__(self)
            self.layer = torch.nn.Linear(4, 1)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    with pytest.raises(AttributeError, match="update_attr=True needs the learning rate"):
        Tuner(make_trainer(max_epochs=1)).lr_find(NoLr(), train_dataloaders=loader(), num_training=5)
    trainer = make_trainer(max_epochs=1, callbacks=[LearningRateFinder()])
    with pytest.raises(ValueError, match="already has a LearningRateFinder"):
        Tuner(trainer).lr_find(Regression(), train_dataloaders=loader())


def test_a_default_trainer_fits_after_the_tuner(tmp_path):
    model = Regression(lr=0.05)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, default_root_dir=tmp_path,
                        enable_progress_bar=True, enable_model_summary=True)
    finder = Tuner(trainer).lr_find(model, train_dataloaders=loader(256, batch_size=16), num_training=30,
                                    min_lr=1e-4, max_lr=1.0)
    assert trainer.global_step == 0 and model.hparams.lr == finder.suggestion()
    trainer.fit(model, loader(64))
    assert trainer.global_step == 16
    assert trainer.optimizers[0].param_groups[0]["lr"] == finder.suggestion()
    assert not any(isinstance(c, LearningRateFinder) for c in trainer.callbacks)


def test_accumulation_records_one_learning_rate_per_optimizer_step():
    finder = Tuner(make_trainer(max_epochs=1, accumulate_grad_batches=2)).lr_find(
        Regression(), train_dataloaders=loader(64), min_lr=1e-3, max_lr=1e-1, num_training=10,
        early_stop_threshold=None, update_attr=False)
    assert finder.results["lr"] == pytest.approx([1e-3 * 100 ** (i / 9) for i in range(10)], rel=1e-6)


def test_finder_rerun_at_an_epoch_start_inside_training():
    class AtEpoch(LearningRateFinder):
        def on_fit_start(self, trainer, pl_module):
            pass

        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                self.lr_find(trainer, pl_module)

    finder = AtEpoch(num_training_steps=20, min_lr=1e-4, max_lr=1.0)
    counter = Counter()
    model, trainer = _fit([finder, counter])
    assert counter.train_batches == trainer.global_step == 16  # the sweep's batches are not the run's
    assert len(finder.optimal_lr.results["lr"]) > 0
    assert trainer.optimizers[0].param_groups[0]["lr"] == model.hparams.lr == finder.optimal_lr.suggestion()
