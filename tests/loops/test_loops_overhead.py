"""The Trainer's per-step cost over a raw loop, counted like benchmarks/overhead.py (sys.setprofile "call" and
"c_call" events): at most 407 extra calls per step with progress bar, logger, checkpointing and summary off
(Lightning's Trainer adds about 1,628). Steps are the difference of a 40- and an 80-batch fit, so setup cancels."""
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import loops as L
from loops_helpers import make_trainer

BUDGET = 407


class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.model(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _data(steps):
    generator = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(steps * 8, 8, generator=generator), torch.randn(steps * 8, 1, generator=generator))


def _count(run):
    calls = 0

    def profiler(frame, event, arg):
        nonlocal calls
        if event == "call" or event == "c_call":
            calls += 1

    sys.setprofile(profiler)
    try:
        run()
    finally:
        sys.setprofile(None)
    return calls


def _raw_calls(steps):
    model = Tiny().model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = DataLoader(_data(steps), batch_size=8)

    def run():
        for x, y in loader:
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            optimizer.step()

    return _count(run), model


def _trainer_calls(steps):
    model = Tiny()
    trainer = make_trainer(max_epochs=1, num_sanity_val_steps=0)
    return _count(lambda: trainer.fit(model, DataLoader(_data(steps), batch_size=8))), model


def test_extra_calls_per_step_within_budget():
    torch.set_num_threads(1)
    _raw_calls(5), _trainer_calls(5)  # first runs pay one-time costs (lazy imports, caches)
    raw = (_raw_calls(80)[0] - _raw_calls(40)[0]) / 40
    ours = (_trainer_calls(80)[0] - _trainer_calls(40)[0]) / 40
    assert ours - raw <= BUDGET, f"Trainer adds {ours - raw:.1f} calls per step (budget {BUDGET})"


def test_same_weights_as_the_raw_loop():
    _, raw_model = _raw_calls(20)
    _, module = _trainer_calls(20)
    assert all(torch.equal(a, b) for a, b in zip(raw_model.parameters(), module.model.parameters()))
