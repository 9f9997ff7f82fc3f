"""Trainer(on_oom=...) on one process: "reduce" runs a batch that ran out of memory again as smaller micro-batches
and keeps them, ending where a run without the error ends; "raise" (the default) lets the error through; the
settings it cannot honour are refused. The two-process cases are in tests/test_out_of_memory.py."""
import pytest
import torch

from tests.helpers.loops import Regression, loader, make_trainer


class CappedRegression(Regression):
    """Runs out of memory in its forward on batches above `limit` rows; records the rows of each forward."""

    def __init__(self, limit=None):
        super().__init__()
        self.limit = limit
        self.rows = []

    def forward(self, x):
        self.rows.append(x.shape[0])
        if self.limit is not None and x.shape[0] > self.limit:
            raise torch.OutOfMemoryError(f"out of memory: {x.shape[0]} rows")
        return super().forward(x)


def fit(model, batch_size=8, n=32, **options):
    torch.manual_seed(0)
    trainer = make_trainer(max_epochs=1, **options)
    with torch.no_grad():
        model.layer.weight.copy_(torch.linspace(-1, 1, 4))
        model.layer.bias.zero_()
    trainer.fit(model, loader(n, batch_size=batch_size))
    return trainer, torch.cat([model.layer.weight.flatten(), model.layer.bias]).detach()


@pytest.mark.parametrize("accumulate", [1, 2])
def test_reduce_continues_from_the_same_step_with_smaller_micro_batches(accumulate):
    model = CappedRegression(limit=3)
    with pytest.warns(UserWarning, match="each batch now runs as 4 micro-batches of about 2 rows"):
        trainer, reduced = fit(model, on_oom="reduce", accumulate_grad_batches=accumulate)
    reference_trainer, reference = fit(CappedRegression(), accumulate_grad_batches=accumulate)
    assert trainer.oom_splits == 4 and model.rows[:3] == [8, 4, 2]
    assert set(model.rows[3:]) == {2}  # every later batch runs as micro-batches of 2
    assert trainer.global_step == reference_trainer.global_step == 4 // accumulate
    assert torch.allclose(reduced, reference, rtol=0, atol=1e-6)
    # The batch's loss reaches on_train_batch_end as the mean over its micro-batches.
    assert torch.isfinite(trainer.callback_metrics["train_loss"])


def test_uneven_micro_batches_are_weighed_by_their_rows():
    model = CappedRegression(limit=4)
    with pytest.warns(UserWarning, match="2 micro-batches"):
        _, reduced = fit(model, batch_size=7, n=21, on_oom="reduce")
    _, reference = fit(CappedRegression(), batch_size=7, n=21)
    assert model.rows[:3] == [7, 4, 3]
    assert torch.allclose(reduced, reference, rtol=0, atol=1e-6)


def test_raise_is_the_default_and_a_batch_failing_at_one_row_ends_the_run():
    with pytest.raises(torch.OutOfMemoryError, match="8 rows"):
        fit(CappedRegression(limit=3))
    with pytest.raises(RuntimeError, match="even as micro-batches of one row"), pytest.warns(UserWarning):
        fit(CappedRegression(limit=0), on_oom="reduce")


def test_settings_reduce_cannot_honour_are_refused():
    with pytest.raises(ValueError, match="on_oom='shrink'"):
        make_trainer(on_oom="shrink")

    class Manual(Regression):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            return None

    with pytest.raises(ValueError, match="needs automatic optimization"):
        make_trainer(max_epochs=1, on_oom="reduce").fit(Manual(), loader())


class _OutOfMemoryInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise torch.OutOfMemoryError("out of memory in backward")


def test_a_batch_failing_after_adding_to_its_window_raises_instead_of_counting_twice():
    class FailsInSecondBackward(Regression):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            return _OutOfMemoryInBackward.apply(loss) if batch_idx == 1 else loss

    with pytest.raises(RuntimeError, match="batch 1 ran out of memory after part of its gradients"):
        fit(FailsInSecondBackward(), on_oom="reduce", accumulate_grad_batches=2)


def test_the_batch_size_finder_measures_with_errors_raised_even_under_reduce():
    from loops.callbacks import BatchSizeFinder
    from tests.helpers.loops import dataset

    class Sized(CappedRegression):
        def __init__(self):
            super().__init__(limit=5)
            self.batch_size = 2

        def train_dataloader(self):
            return torch.utils.data.DataLoader(dataset(64), batch_size=self.batch_size)

    model = Sized()
    finder = BatchSizeFinder(init_val=2, steps_per_trial=1)
    trainer = make_trainer(max_epochs=1, on_oom="reduce", callbacks=[finder])
    trainer.fit(model)
    assert finder.optimal_batch_size == 4 and trainer.oom_splits == 1
