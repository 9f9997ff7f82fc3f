"""Trainer arguments that change how torch runs (deterministic, benchmark, inference_mode, detect_anomaly), what
fabric is given (plugins), how loaders are rebuilt (use_distributed_sampler) and when fit may stop (min_steps),
each doing what Lightning documents."""
import os

import pytest
import torch
from torch.utils.data import DataLoader, Sampler

from fabric_kit.precision import DoublePrecision
from tests.helpers.loops import Regression, dataset, loader, make_trainer


@pytest.fixture
def torch_flags():
    """deterministic / benchmark are process-wide: put them back after the test."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark)
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.backends.cudnn.benchmark = saved[2]


def test_deterministic_and_benchmark(torch_flags, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    torch.backends.cudnn.benchmark = True
    make_trainer(deterministic=True)
    assert torch.are_deterministic_algorithms_enabled() and not torch.is_deterministic_algorithms_warn_only_enabled()
    assert torch.backends.cudnn.benchmark is False  # turned off for determinism unless asked for
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    make_trainer(deterministic="warn")
    assert torch.is_deterministic_algorithms_warn_only_enabled()
    make_trainer(deterministic=False, benchmark=True)
    assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark is True
    make_trainer()  # None: the session's settings stay
    assert torch.backends.cudnn.benchmark is True
    with pytest.warns(UserWarning, match="not deterministic"):
        make_trainer(deterministic=True, benchmark=True)
    with pytest.raises(ValueError, match=r"deterministic='yes' is not valid; accepted: None, True, False, 'warn'"):
        make_trainer(deterministic="yes")


@pytest.mark.parametrize("inference_mode", [True, False])
def test_inference_mode_or_no_grad_in_evaluation(inference_mode):
    seen = {}

    class Model(Regression):
        def validation_step(self, batch, batch_idx):
            seen["inference"], seen["grad"] = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

    make_trainer(inference_mode=inference_mode).validate(Model(), loader(n=4))
    assert seen == {"inference": inference_mode, "grad": False}


def test_detect_anomaly_is_on_during_fit_only():
    seen = []

    class Model(Regression):
        def training_step(self, batch, batch_idx):
            seen.append(torch.is_anomaly_enabled())
            return super().training_step(batch, batch_idx)

    make_trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0, detect_anomaly=True).fit(Model(), loader())
    assert seen == [True, True] and not torch.is_anomaly_enabled()

    class NaN(Regression):
        def training_step(self, batch, batch_idx):
            return super().training_step(batch, batch_idx) * torch.tensor(float("nan"))

    with pytest.raises(RuntimeError, match="returned nan"), pytest.warns(UserWarning, match="Error detected"):
        make_trainer(max_epochs=1, limit_val_batches=0, detect_anomaly=True).fit(NaN(), loader())


def test_plugins_reach_fabric():
    seen = {}

    class Model(Regression):
        def training_step(self, batch, batch_idx):
            seen["dtype"] = self.layer.weight.dtype
            return super().training_step(batch, batch_idx)

    trainer = make_trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0,
                           plugins=DoublePrecision())
    trainer.fit(Model(), loader())
    assert trainer.precision == "64-true" and seen["dtype"] == torch.float64


class Backwards(Sampler):
    def __init__(self, n):
        self.n = n

    def __iter__(self):
        return iter(range(self.n - 1, -1, -1))

    def __len__(self):
        return self.n


@pytest.mark.parametrize("use_distributed_sampler", [True, False])
def test_use_distributed_sampler(use_distributed_sampler):
    firsts = []

    class Model(Regression):
        def training_step(self, batch, batch_idx):
            firsts.append(batch[1][0].item())
            return super().training_step(batch, batch_idx)

    sampler = Backwards(8)
    trainer = make_trainer(max_epochs=1, limit_val_batches=0, use_distributed_sampler=use_distributed_sampler)
    trainer.fit(Model(), DataLoader(dataset(8), batch_size=4, sampler=sampler))
    assert firsts == [dataset(8)[7][1].item(), dataset(8)[3][1].item()]  # the user's order either way
    # False: the loader is used as given; True: fabric's resumable sampler wraps the user's (in the loader the fit
    # loop iterates; `trainer.train_dataloader` is the user's own, as in Lightning)
    assert (trainer.fit_loop.train_loader.sampler is sampler) is not use_distributed_sampler


def test_min_steps_keeps_training_after_should_stop():
    class Stop(Regression):
        def on_train_batch_end(self, outputs, batch, batch_idx):
            self.trainer.should_stop = True

    trainer = make_trainer(max_epochs=5, min_steps=5, limit_val_batches=0)
    trainer.fit(Stop(), loader())
    assert trainer.global_step == 5


def test_estimated_stepping_batches_with_max_steps_and_infinite_epochs():
    assert make_trainer(max_epochs=-1, max_steps=7).estimated_stepping_batches == 7
    trainer = make_trainer(max_epochs=10, max_steps=5, accumulate_grad_batches=2)
    seen = {}

    class Model(Regression):
        def configure_optimizers(self):
            seen["steps"] = self.trainer.estimated_stepping_batches
            return super().configure_optimizers()

    trainer.fit(Model(), loader(), loader(n=4))
    assert seen["steps"] == 5  # min(10 epochs * 4 steps, max_steps)


def test_sync_batchnorm_needs_gpus_on_several_processes():
    # torch's SyncBatchNorm and DDP refuse CPU modules; on one process there is nothing to sync (as Lightning)
    with pytest.raises(ValueError, match="sync_batchnorm=True needs GPUs"):
        make_trainer(devices=2, strategy="ddp", sync_batchnorm=True)
    model = Regression()
    model.norm = torch.nn.BatchNorm1d(4)
    make_trainer(sync_batchnorm=True, max_epochs=1, limit_val_batches=0).fit(model, loader(n=8))
    assert type(model.norm) is torch.nn.BatchNorm1d
