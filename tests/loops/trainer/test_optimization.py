"""The optimizer step of automatic optimization, run on Lightning 2.6 and on loops (`both`): the Trainer's closure
reaches the torch optimizer, so LBFGS re-evaluates the whole step (training_step, backward, hooks), and
`optimizer.step(closure=...)` in an overridden `optimizer_step` returns the closure's loss."""
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from tests.helpers.both_trainers import QUIET, both, quiet  # noqa: F401  (quiet: a fixture used below)

pytestmark = pytest.mark.usefixtures("quiet")


def fitted(L, optimizer):
    class Records(L.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.layer = torch.nn.Linear(2, 1)
            self.calls = []

        def training_step(self, batch, batch_idx):
            self.calls.append("training_step")
            return torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])

        def on_before_optimizer_step(self, optimizer):
            self.calls.append("on_before_optimizer_step")

        def configure_optimizers(self):
            return optimizer(self.parameters())

        def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
            loss = optimizer.step(closure=optimizer_closure)
            self.calls.append(round(float(loss), 4))

        def train_dataloader(self):
            torch.manual_seed(1)
            return DataLoader(TensorDataset(torch.randn(8, 2), torch.randn(8, 1)), batch_size=4)

    model = Records()
    trainer = L.Trainer(**QUIET, max_epochs=1, gradient_clip_val=0.5)
    trainer.fit(model)
    return model, trainer


@both
def test_lbfgs_reevaluates_the_closure(L):
    model, trainer = fitted(L, lambda params: torch.optim.LBFGS(params, lr=0.5, max_iter=3))
    evaluation = ["training_step", "on_before_optimizer_step"]
    assert model.calls == [*evaluation * 3, 0.4253, *evaluation * 3, 0.3731]
    assert trainer.global_step == 2
    assert model.layer.weight.detach()[0].tolist() == pytest.approx([-0.0771, 0.1261], abs=1e-4)


@both
def test_overridden_optimizer_step_gets_the_loss(L):
    model, trainer = fitted(L, lambda params: torch.optim.SGD(params, lr=0.1))
    assert model.calls == ["training_step", "on_before_optimizer_step", 0.4253,
                           "training_step", "on_before_optimizer_step", 0.1979]
