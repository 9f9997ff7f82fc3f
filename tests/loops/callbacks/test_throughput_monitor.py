"""ThroughputMonitor on real CPU fits: rates per device and their consistency (samples = 4 x batches for batches of
4), items with a length function, FLOPs and MFU when the peak is known, validation and test stages; the rolling
window arithmetic on fixed times."""
import pytest
import torch

from loops.callbacks import ThroughputMonitor
from loops.callbacks.throughput_monitor import Throughput, compute_dtype, get_available_flops
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


def test_rolling_window_arithmetic_and_global_rates():
    throughput = Throughput(available_flops=100.0, world_size=2, window_size=3)
    for i, t in enumerate([1.0, 2.0, 3.0, 5.0], start=1):
        throughput.update(time=t, batches=i, samples=8 * i, lengths=80 * i, flops=50)
    metrics = throughput.compute()
    assert metrics["device/batches_per_sec"] == pytest.approx(2 / 3)  # batches 2..4 over 2.0..5.0 s
    assert metrics["samples_per_sec"] == pytest.approx(2 * 16 / 3)
    assert metrics["device/items_per_sec"] == pytest.approx(160 / 3)
    assert metrics["device/flops_per_sec"] == pytest.approx(100 / 3)
    assert metrics["device/mfu"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="samples \\(1\\) cannot be fewer than batches \\(2\\)"):
        throughput.update(time=6.0, batches=2, samples=1)
    with pytest.raises(ValueError, match="window_size=1"):
        ThroughputMonitor(batch_size_fn=len, window_size=1)


def test_peak_flops_lookup():
    assert get_available_flops(torch.device("cpu"), torch.float32) is None
    assert compute_dtype("bf16-mixed") is torch.bfloat16 and compute_dtype("16-true") is torch.float16
    assert compute_dtype("32-true") is torch.float32
