"""ThroughputMonitor on real CPU fits: rates per device and their consistency (samples = 4 x batches for batches of
4), items with a length function, FLOPs and MFU when the peak is known, validation and test stages; Lightning's
logged keys and steps. The window arithmetic itself is tested in tests/test_throughput.py."""
import importlib

import pytest
import torch
from torch.utils.data import DataLoader

import loops
from loops.callbacks import ThroughputMonitor
from tests.helpers.both_trainers import QUIET, pl, quiet  # noqa: F401 (quiet is a fixture)
from tests.helpers.loops import Regression, loader, make_trainer


class Recording:
    """A logger keeping every log_metrics call."""

    def __init__(self):
        self.calls = []

    def log_metrics(self, metrics, step=None):
        self.calls.append((step, dict(metrics)))

    def series(self, name):
        return [metrics[name] for _, metrics in self.calls if name in metrics]


class WithFlops(Regression):
    flops_per_batch = 1000


def _fit(monitor, model=None, **kwargs):
    logger = Recording()
    trainer = make_trainer(max_epochs=1, log_every_n_steps=1, callbacks=[monitor], **kwargs)
    trainer.loggers = [logger]
    trainer.fit(model or Regression(), loader(64), loader(16, seed=1))
    return trainer, logger


def test_samples_items_and_batches_per_second_agree():
    monitor = ThroughputMonitor(batch_size_fn=lambda batch: len(batch[0]), length_fn=lambda batch: 10 * len(batch[0]),
                                window_size=4)
    trainer, logger = _fit(monitor)
    assert logger.series("train/batches") == list(range(1, 17))
    assert logger.series("train/samples")[-1] == 64 and logger.series("train/lengths")[-1] == 640
    batches = logger.series("train/device/batches_per_sec")
    samples = logger.series("train/device/samples_per_sec")
    items = logger.series("train/device/items_per_sec")
    assert len(batches) == 13 and all(rate > 0 for rate in batches)  # from the 4th batch, when the window is full
    assert samples == pytest.approx([4 * rate for rate in batches])
    assert items == pytest.approx([40 * rate for rate in batches])
    assert "train/samples_per_sec" not in logger.calls[-1][1]  # one process: no global rates
    assert not logger.series("train/device/mfu")  # no peak known on a CPU
    assert logger.series("validate/batches") == [1, 2, 3, 4]
    assert trainer.logged_metrics["train/samples"] == 64


def test_flops_and_mfu_when_the_peak_is_given():
    monitor = ThroughputMonitor(batch_size_fn=lambda batch: len(batch[0]), window_size=3)
    monitor.available_flops = 1e9
    _, logger = _fit(monitor, WithFlops())
    flops = logger.series("train/device/flops_per_sec")
    assert flops == pytest.approx([1000 * rate for rate in logger.series("train/device/batches_per_sec")])
    assert logger.series("train/device/mfu") == pytest.approx([rate / 1e9 for rate in flops])


def test_accumulation_logs_whole_windows_and_test_stage_has_its_own_prefix():
    monitor = ThroughputMonitor(batch_size_fn=lambda batch: len(batch[0]), window_size=2)
    trainer, logger = _fit(monitor, accumulate_grad_batches=2)
    assert logger.series("train/batches") == list(range(2, 17, 2))
    trainer.test(trainer.lightning_module, loader(12), verbose=False)
    assert logger.series("test/samples") == [4, 8, 12]


def test_a_bad_window_fails_at_construction():
    with pytest.raises(ValueError, match="window_size=1"):
        ThroughputMonitor(batch_size_fn=len, window_size=1)


def _logged_keys(L):
    """(step, stage keys) of every log call of Lightning's or loops' ThroughputMonitor: a 2-epoch fit with
    validation, then two test calls."""
    boring_classes = importlib.import_module(f"{L.__name__}.demos.boring_classes")

    class Keeping(L.loggers.Logger):
        name, version = "keeping", 0

        def __init__(self):
            super().__init__()
            self.calls = []

        def log_metrics(self, metrics, step=None):
            self.calls.append((step, sorted(metrics)))

        def log_hyperparams(self, *args, **kwargs):
            pass

    class Model(boring_classes.BoringModel):
        def val_dataloader(self):
            return DataLoader(torch.randn(8, 32), batch_size=2)

        def test_dataloader(self):
            return DataLoader(torch.randn(6, 32), batch_size=2)

    logger = Keeping()
    trainer = L.Trainer(**{**QUIET, "logger": logger}, max_epochs=2, limit_train_batches=4, log_every_n_steps=1,
                        num_sanity_val_steps=0,
                        callbacks=[L.callbacks.ThroughputMonitor(lambda batch: batch.shape[0], window_size=2)])
    trainer.fit(Model())
    trainer.test(Model(), verbose=False)
    trainer.test(Model(), verbose=False)
    return logger.calls


@pytest.mark.usefixtures("quiet")
def test_logged_keys_and_steps_are_lightnings():
    ours, theirs = _logged_keys(loops), _logged_keys(pl)
    assert ours == theirs
    assert [step for step, keys in ours if "test/batches" in keys] == [1, 2, 3, 4, 5, 6]  # test() carries on
    assert all("epoch" in keys for _, keys in ours if "train/batches" in keys)
