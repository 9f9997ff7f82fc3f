"""Which hooks and steps the Trainer calls, and how: hooks set on an instance or a `Mock(spec=Callback)`,
LambdaCallback's plain functions, steps switched off with None, steps without `batch_idx`; and how `ckpt_path`
is read (`weights_only`, `strict_loading`). Each runs on Lightning 2.6 and on loops (`both`)."""
import functools
import pickle
from unittest.mock import Mock

import pytest
import torch
from torch.utils.data import DataLoader

import loops
from fabric_kit.checkpoint import UnsafeCheckpointError
from loops import callbacks as loops_callbacks
from tests.helpers.both_trainers import QUIET, both, pl, quiet  # noqa: F401  (quiet: a fixture used below)

pytestmark = pytest.mark.usefixtures("quiet")


def callbacks_of(L):
    return loops_callbacks if L is loops else pl.callbacks


def module_class(L):
    class Model(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)
            self.validated = 0

        def training_step(self, batch, batch_idx):
            return self.layer(batch).pow(2).mean()

        def validation_step(self, batch, batch_idx):
            self.validated += 1

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return Model


def data(n=8):
    return DataLoader(torch.randn(n, 2), batch_size=2)


def fit(L, model, callbacks=(), **kwargs):
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, callbacks=list(callbacks),
                        **{**QUIET, **kwargs})
    trainer.fit(model, data(), data(4))
    return trainer


def called_hooks(L):
    callback = Mock(spec=L.Callback)
    fit(L, module_class(L)(), [callback])
    return sorted({call[0] for call in callback.method_calls})


def test_a_mock_callback_sees_the_same_hooks_as_on_lightning():
    hooks = called_hooks(loops)
    assert hooks == called_hooks(pl)
    assert {"setup", "on_fit_start", "on_train_epoch_end", "on_validation_end", "teardown"} <= set(hooks)


@both
def test_hooks_set_on_an_instance_and_lambda_callback_functions_are_called(L):
    calls = []

    def hook(name, trainer, pl_module):
        calls.append(name)

    instance = L.Callback()
    instance.on_train_epoch_end = functools.partial(hook, "instance")
    lambdas = callbacks_of(L).LambdaCallback(on_train_start=lambda trainer, pl_module: calls.append("lambda"),
                                             on_train_epoch_end=functools.partial(hook, "partial"),
                                             on_fit_end=lambda *args: calls.append("varargs"))
    fit(L, module_class(L)(), [instance, lambdas])
    assert sorted(calls) == ["instance", "lambda", "partial", "varargs"]


@both
@pytest.mark.parametrize("switched_off", ["validation_step", "val_dataloader"])
def test_a_step_or_loader_set_to_none_switches_validation_off(L, switched_off):
    class Model(module_class(L)):
        def val_dataloader(self):
            return data(4)

    model = Model()
    setattr(model, switched_off, None)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, **QUIET)
    trainer.fit(model, data())
    assert model.validated == 0


@both
def test_steps_without_batch_idx_get_the_batch_alone(L):
    class NoIndex(module_class(L)):
        def training_step(self, batch):
            return self.layer(batch).pow(2).mean()

        def validation_step(self, batch):
            self.validated += 1

        def predict_step(self, batch):
            return self.layer(batch)

    model = NoIndex()
    trainer = fit(L, model, num_sanity_val_steps=0)
    assert (trainer.global_step, model.validated) == (2, 1)
    assert len(trainer.predict(model, data(4))) == 2


class Opaque:
    """Not a tensor or plain container: torch's safe loading refuses it."""


@both
def test_weights_only_decides_whether_a_checkpoint_may_unpickle_objects(L, tmp_path):
    class Saving(module_class(L)):
        def on_save_checkpoint(self, checkpoint):
            checkpoint["opaque"] = Opaque()

    trainer = fit(L, Saving())
    trainer.save_checkpoint(tmp_path / "opaque.ckpt")
    with pytest.raises(pickle.UnpicklingError if L is pl else UnsafeCheckpointError):
        L.Trainer(**QUIET).validate(Saving(), data(4), ckpt_path=tmp_path / "opaque.ckpt", verbose=False)
    L.Trainer(**QUIET).validate(Saving(), data(4), ckpt_path=tmp_path / "opaque.ckpt", verbose=False,
                                weights_only=False)


@both
def test_strict_loading_false_takes_a_checkpoint_without_some_keys(L, tmp_path):
    class Extra(module_class(L)):
        def __init__(self):
            super().__init__()
            self.extra = torch.nn.Linear(1, 1)

    trainer = fit(L, module_class(L)())
    trainer.save_checkpoint(tmp_path / "plain.ckpt")
    with pytest.raises(RuntimeError, match="extra"):
        L.Trainer(**QUIET).validate(Extra(), data(4), ckpt_path=tmp_path / "plain.ckpt", verbose=False)
    relaxed = Extra()
    relaxed.strict_loading = False
    L.Trainer(**QUIET).validate(relaxed, data(4), ckpt_path=tmp_path / "plain.ckpt", verbose=False)
    assert torch.equal(relaxed.layer.weight, trainer.lightning_module.layer.weight)
