"""LightningModule methods as Lightning 2.6 has them, run on Lightning and on loops (`both`):
`toggled_optimizer()` freezes the other optimizers' parameters for a block and restores them after it, also when
the block raises."""
import pytest
import torch
from torch.utils.data import DataLoader

from tests.helpers.both_trainers import QUIET, both, quiet  # noqa: F401  (quiet: a fixture used below)

pytestmark = pytest.mark.usefixtures("quiet")


@both
def test_toggled_optimizer(L):
    class TwoOptimizers(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False
            self.a, self.b = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
            self.seen = []

        def training_step(self, batch, batch_idx):
            first, _ = self.optimizers()
            with self.toggled_optimizer(first):
                self.seen.append((self.a.weight.requires_grad, self.b.weight.requires_grad))
                loss = (self.a(batch) + self.b(batch)).sum()
                first.zero_grad()
                self.manual_backward(loss)
                first.step()
            self.seen.append((self.a.weight.requires_grad, self.b.weight.requires_grad, self.b.weight.grad))
            with pytest.raises(RuntimeError, match="inside"), self.toggled_optimizer(first):
                raise RuntimeError("inside")
            self.seen.append(self.b.weight.requires_grad)

        def configure_optimizers(self):
            return torch.optim.SGD(self.a.parameters(), lr=0.1), torch.optim.SGD(self.b.parameters(), lr=0.1)

    model = TwoOptimizers()
    L.Trainer(**QUIET, max_steps=1).fit(model, DataLoader(torch.ones(2, 2), batch_size=2))
    assert model.seen == [(True, False), (True, True, None), True]
