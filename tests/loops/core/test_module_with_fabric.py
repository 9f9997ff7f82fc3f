"""A LightningModule driven by a plain Fabric loop (Lightning's reinforcement-learning example does this):
`fabric.setup` attaches the Fabric, so the module's logging, optimizers, backward and clipping go through it."""
import pickle

import pytest
import torch
from torch import nn

import loops as L
from fabric_kit import Fabric

pytestmark = pytest.mark.usefixtures("clean_env")


class Recorder:
    def __init__(self):
        self.logged = []

    def log_metrics(self, metrics, step=None):
        self.logged.append(metrics)


class Agent(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(2, 1)
        self.epochs_ended = 0

    def forward(self, x):
        return self.layer(x)

    def training_step(self, batch):
        optimizer = self.optimizers()
        loss = self(batch).pow(2).sum()
        optimizer.zero_grad()
        self.manual_backward(loss)
        self.clip_gradients(optimizer, gradient_clip_val=1e-3, gradient_clip_algorithm="value")
        optimizer.step()
        self.log("loss", loss)
        self.logger.log_metrics({"direct": 1.0})
        return loss

    def on_train_epoch_end(self):
        self.epochs_ended += 1


def test_a_fabric_loop_drives_a_lightning_module():
    recorder = Recorder()
    fabric = Fabric(accelerator="cpu", devices=1, loggers=recorder)
    agent = Agent()
    model, optimizer = fabric.setup(agent, torch.optim.SGD(agent.parameters(), lr=1.0))
    assert agent.optimizers() is optimizer and agent.logger is recorder and agent.loggers == [recorder]
    assert agent.fabric is fabric and agent.device == torch.device("cpu") and agent.global_rank == 0
    before = agent.layer.weight.detach().clone()
    loss = model.training_step(torch.ones(1, 2))
    # the gradient was clipped to 1e-3 before the step with lr 1
    assert torch.allclose((agent.layer.weight - before).abs(), torch.full((1, 2), 1e-3))
    assert recorder.logged == [{"loss": loss.item()}, {"direct": 1.0}]
    fabric.call("on_train_epoch_end")  # the module is one of the Fabric's callbacks, as in Lightning
    assert agent.epochs_ended == 1
    assert pickle.loads(pickle.dumps(agent))._fabric is None  # a copy is not attached


def test_logging_without_trainer_or_fabric_is_an_error():
    with pytest.raises(RuntimeError, match="needs a running Trainer or a Fabric"):
        Agent().log("loss", 1.0)
