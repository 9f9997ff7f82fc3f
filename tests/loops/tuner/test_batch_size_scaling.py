"""The batch-size search (Tuner.scale_batch_size and the BatchSizeFinder callback) against a model that runs out of
memory above a known batch size."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from fabric_kit.out_of_memory import is_oom_error
from loops.callbacks import BatchSizeFinder
from loops.tuner import Tuner
from loops.tuner.batch_size_scaling import _Search
from tests.helpers.loops import Regression, dataset, loader, make_trainer


class MemoryCapped(Regression):
    """Raises torch.OutOfMemoryError for batches larger than `limit`; records the batch sizes it trained on."""

    def __init__(self, limit):
        super().__init__()
        self.limit = limit
        self.trained_sizes = []

    def forward(self, x):
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError(f"out of memory: batch of {x.shape[0]} is above {self.limit}")
        return super().forward(x)

    def training_step(self, batch, batch_idx):
        self.trained_sizes.append(len(batch[0]))
        return super().training_step(batch, batch_idx)


class LimitedMemory(MemoryCapped):
    """Builds its loaders from `batch_size`, an attribute or (in_hparams) an hparams key."""

    def __init__(self, limit, batch_size=2, in_hparams=False):
        super().__init__(limit)
        if in_hparams:
            self.hparams.batch_size = batch_size
        else:
            self.batch_size = batch_size

    def _size(self):
        return self.hparams.batch_size if "batch_size" in self.hparams else self.batch_size

    def train_dataloader(self):
        return DataLoader(dataset(256), batch_size=self._size())

    def val_dataloader(self):
        return DataLoader(dataset(256, seed=1), batch_size=self._size())


@pytest.mark.parametrize("mode, expected", [("power", 16), ("binsearch", 24)])
def test_tuner_settles_on_the_largest_size_that_fits_and_restores_the_model(mode, expected):
    model = LimitedMemory(limit=24, in_hparams=mode == "binsearch")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = make_trainer(max_epochs=1)
    found = Tuner(trainer).scale_batch_size(model, mode=mode, margin=0.0, steps_per_trial=2)
    assert found == expected and model._size() == expected
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert trainer.global_step == 0 and trainer.current_epoch == 0


def test_callback_trains_with_the_found_size():
    model = LimitedMemory(limit=40)
    finder = BatchSizeFinder(mode="binsearch", init_val=4, margin=0.1)
    trainer = make_trainer(max_epochs=1, callbacks=[finder])
    trainer.fit(model)
    assert finder.optimal_batch_size == 36  # 40 fits, 41 does not; 10% headroom
    assert model.batch_size == 36
    trial_batches = len(model.trained_sizes) - trainer.global_step
    assert set(model.trained_sizes[trial_batches:]) <= {36, 256 % 36}  # the real epoch
    assert trainer.global_step == -(-256 // 36)


def test_a_size_larger_than_the_data_stops_the_growth():
    model = LimitedMemory(limit=10_000)
    assert Tuner(make_trainer(max_epochs=1)).scale_batch_size(model, init_val=64, steps_per_trial=1) == 256


def test_other_errors_propagate_and_nothing_fitting_is_explained():
    class Broken(LimitedMemory):
        def forward(self, x):
            raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        Tuner(make_trainer(max_epochs=1)).scale_batch_size(Broken(limit=8))
    with pytest.raises(RuntimeError, match="no batch_size fitted in memory"):
        Tuner(make_trainer(max_epochs=1)).scale_batch_size(LimitedMemory(limit=0), init_val=4)


def test_configuration_errors_name_the_fix():
    with pytest.raises(ValueError, match="mode='linear'"):
        BatchSizeFinder(mode="linear")
    with pytest.raises(ValueError, match="margin=1.5"):
        BatchSizeFinder(margin=1.5)
    trainer = make_trainer(max_epochs=1, callbacks=[BatchSizeFinder()])
    with pytest.raises(ValueError, match="cannot resize dataloaders passed to fit"):
        trainer.fit(LimitedMemory(limit=8), loader())
    with pytest.raises(AttributeError, match="'batch_size' is neither an attribute"):
        Tuner(make_trainer(max_epochs=1)).scale_batch_size(Regression(), train_dataloaders=None)


def test_out_of_memory_recognition():
    assert is_oom_error(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_oom_error(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 GB"))
    assert not is_oom_error(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_oom_error(ValueError("out of memory"))


class _ArithmeticSearch(_Search):
    """The search strategy alone: a size fits when it is at most `limit` (no Trainer involved)."""

    def __init__(self, limit, max_val=8192, floor=1):
        self.limit, self.max_val, self.name, self.floor = limit, max_val, "batch_size", floor
        self.dataset_length, self.smallest_failed = None, None

    def fits(self, size):
        if size > self.limit:
            self.smallest_failed = min(size, self.smallest_failed or size)
        return size <= self.limit


@settings(max_examples=200, deadline=None)
@given(limit=st.integers(1, 5000), init=st.integers(1, 64))
def test_search_strategies_find_the_limit(limit, init):
    assert _ArithmeticSearch(limit).binsearch(init, max_trials=100) == limit
    power = _ArithmeticSearch(limit).power(init, max_trials=100)
    assert power <= limit < 2 * power  # a doubling of init (or, when init is too large, a halving) that fits
    assert _ArithmeticSearch(limit, max_val=100).binsearch(init, max_trials=100) == min(limit, 100)


def test_datamodule_attribute_is_scaled_and_a_later_fit_uses_it():
    import loops as L

    class Data(L.LightningDataModule):
        def __init__(self):
            super().__init__()
            self.batch_size = 2

        def train_dataloader(self):
            return DataLoader(dataset(64), batch_size=self.batch_size)

    model, data = MemoryCapped(limit=20), Data()
    trainer = make_trainer(max_epochs=1)
    assert Tuner(trainer).scale_batch_size(model, datamodule=data, init_val=5) == 20
    assert data.batch_size == 20
    trainer.fit(model, datamodule=data)
    assert model.trained_sizes[-4:] == [20, 20, 20, 4]


@settings(max_examples=200, deadline=None)
@given(limit=st.integers(0, 500), floor=st.integers(1, 40), extra=st.integers(0, 64))
def test_no_size_below_the_floor_is_tried_and_its_failure_is_named(limit, floor, extra):
    for mode in ("power", "binsearch"):
        search = _ArithmeticSearch(limit, floor=floor)
        tried = []
        search.fits = lambda size, tried=tried, fits=search.fits: tried.append(size) or fits(size)
        if limit < floor:
            with pytest.raises(RuntimeError, match=f"even the floor, {floor}, ran out"):
                getattr(search, mode)(floor + extra, max_trials=100)
        else:
            found = getattr(search, mode)(floor + extra, max_trials=100)
            assert floor <= found <= limit
        assert min(tried) >= floor


def test_keep_global_batch_trades_batch_size_for_accumulation():
    model = LimitedMemory(limit=5, batch_size=12)
    finder = BatchSizeFinder(init_val=2, steps_per_trial=1, keep_global_batch=True)
    trainer = make_trainer(max_epochs=1, accumulate_grad_batches=2, callbacks=[finder])
    trainer.fit(model)
    # 2 and 4 fit, 8 does not; the largest divisor of the step's 24 samples that fits is 4: accumulate 6 of them.
    assert (finder.optimal_batch_size, model.batch_size, trainer.accumulate_grad_batches) == (4, 4, 6)
    assert trainer.global_step == 256 // 24 + 1  # the last window is cut short by the data
    with pytest.raises(ValueError, match="floor=3 is above init_val=2"):
        BatchSizeFinder(init_val=2, floor=3)
    with pytest.raises(ValueError, match="floor=0"):
        BatchSizeFinder(floor=0)


@pytest.mark.parametrize("package", ["lightning.pytorch", "loops"])
def test_train_dataloader_after_the_search_is_the_found_sizes(package):
    L = pytest.importorskip(package)
    tuner = pytest.importorskip(f"{package}.tuner")

    class Sized(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)
            self.batch_size = 2

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def train_dataloader(self):
            return DataLoader(dataset(64), batch_size=self.batch_size)

    trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    assert tuner.Tuner(trainer).scale_batch_size(Sized(), max_trials=3, steps_per_trial=1) == 8
    assert trainer.train_dataloader.batch_size == 8
