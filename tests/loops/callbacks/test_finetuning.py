"""BackboneFinetuning on a real CPU fit: the backbone stays frozen until its epoch, then trains in a new optimizer
parameter group whose learning rate follows the schedule."""
import pytest
import torch
from torch import nn

import loops as L
from loops.callbacks import BackboneFinetuning, BaseFinetuning
from tests.helpers.loops import Regression, loader, make_trainer


class WithBackbone(Regression):
    def __init__(self):
        super().__init__(lr=0.1)
        self.backbone = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU())
        self.layer = nn.Linear(8, 1)

    def forward(self, x):
        return self.layer(self.backbone(x))

    def configure_optimizers(self):
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=self.hparams.lr)


class EpochRecorder(L.Callback):
    def __init__(self):
        self.backbone, self.head, self.group_lrs = [], [], []

    def on_train_epoch_start(self, trainer, pl_module):
        self.group_lrs.append([group["lr"] for group in trainer.optimizers[0].param_groups])

    def on_train_epoch_end(self, trainer, pl_module):
        self.backbone.append(pl_module.backbone[0].weight.detach().clone())
        self.head.append(pl_module.layer.weight.detach().clone())


def _rounded(group_lrs):
    return [[round(lr, 10) for lr in lrs] for lrs in group_lrs]


def test_backbone_frozen_until_its_epoch_then_trained_with_the_scheduled_lr():
    torch.manual_seed(0)
    model = WithBackbone()
    initial = model.backbone[0].weight.detach().clone()
    recorder = EpochRecorder()
    finetuning = BackboneFinetuning(unfreeze_backbone_at_epoch=2, backbone_initial_ratio_lr=0.1)
    trainer = make_trainer(max_epochs=5, callbacks=[finetuning, recorder])
    trainer.fit(model, loader(32, batch_size=8))

    assert torch.equal(recorder.backbone[0], initial) and torch.equal(recorder.backbone[1], initial)
    assert not torch.equal(recorder.backbone[2], initial)
    assert not torch.equal(recorder.backbone[3], recorder.backbone[2])
    assert not torch.equal(recorder.head[0], recorder.head[1])  # the head trained all along
    # 0.1 * 0.1 at epoch 2, then x2 per epoch (Lightning's default lambda_func)
    assert _rounded(recorder.group_lrs) == [[0.1], [0.1], [0.1, 0.01], [0.1, 0.02], [0.1, 0.04]]
    assert all(p.requires_grad for p in model.backbone.parameters())
    assert finetuning.state_dict() == {"previous_backbone_lr": pytest.approx(0.04)}


def test_alignment_caps_the_backbone_lr_and_batch_norm_stays_trainable_while_frozen():
    torch.manual_seed(0)
    model = WithBackbone()
    recorder = EpochRecorder()
    finetuning = BackboneFinetuning(unfreeze_backbone_at_epoch=1, backbone_initial_lr=0.08,
                                    lambda_func=lambda epoch: 2.0)
    seen = []

    class FrozenState(L.Callback):
        def on_train_start(self, trainer, pl_module):
            seen.append({name: p.requires_grad for name, p in pl_module.backbone.named_parameters()})

    trainer = make_trainer(max_epochs=3, callbacks=[finetuning, recorder, FrozenState()])
    trainer.fit(model, loader(32, batch_size=8))
    assert seen == [{"0.weight": False, "0.bias": False, "1.weight": True, "1.bias": True}]
    # the trainable BatchNorm parameters were in the optimizer from the start; the new group holds the Linear's
    assert _rounded(recorder.group_lrs) == [[0.1], [0.1, 0.08], [0.1, 0.1]]


def test_freeze_without_training_batch_norm():
    block = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    BaseFinetuning.freeze(block, train_bn=False)
    assert not any(p.requires_grad for p in block.parameters())
    assert block[1].track_running_stats is False
    BaseFinetuning.make_trainable(block)
    assert all(p.requires_grad for p in block.parameters()) and block[1].track_running_stats


def test_module_without_backbone_is_explained():
    trainer = make_trainer(max_epochs=1, callbacks=[BackboneFinetuning()])
    with pytest.raises(ValueError, match="needs an nn.Module attribute `backbone` on Regression"):
        trainer.fit(Regression(), loader())
    with pytest.raises(ValueError, match="unfreeze_backbone_at_epoch=-1"):
        BackboneFinetuning(unfreeze_backbone_at_epoch=-1)


def test_parameters_the_optimizer_has_already_are_skipped_with_a_warning():
    layer, other = nn.Linear(2, 2), nn.Linear(2, 1)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    with pytest.warns(UserWarning, match="2 of the parameters to add to the optimizer are in one of its"):
        BaseFinetuning.unfreeze_and_add_param_group(nn.ModuleList([layer, other]), optimizer)
    assert [len(group["params"]) for group in optimizer.param_groups] == [2, 2]
