"""Hyperparameters and the checkpoint's keys as Lightning 2.6 has them, run on Lightning and on loops (`both`): the
CHECKPOINT_HYPER_PARAMS_* constants, `save_hparams_to_yaml` / `load_hparams_from_yaml`,
`load_from_checkpoint(hparams_file=...)`, a `@dataclass` module's fields as hparams, and `ignore=` in a subclass."""
import dataclasses
import importlib

import pytest
import torch
from torch.utils.data import DataLoader

from tests.helpers.both_trainers import QUIET, both, quiet  # noqa: F401  (quiet: a fixture used below)

pytestmark = pytest.mark.usefixtures("quiet")


def saving(L):
    return importlib.import_module(f"{L.__name__}.core.saving")


@both
def test_checkpoint_key_constants(L):
    assert (L.LightningModule.CHECKPOINT_HYPER_PARAMS_KEY, L.LightningModule.CHECKPOINT_HYPER_PARAMS_NAME,
            L.LightningModule.CHECKPOINT_HYPER_PARAMS_TYPE) == ("hyper_parameters", "hparams_name", "hparams_type")
    assert L.LightningDataModule.CHECKPOINT_HYPER_PARAMS_KEY == "datamodule_hyper_parameters"


@both
def test_hparams_yaml_round_trip(L, tmp_path):
    path = tmp_path / "hparams.yaml"
    saving(L).save_hparams_to_yaml(path, {"lr": 0.1, "sizes": [1, 2], "nested": {"name": "x"}})
    assert saving(L).load_hparams_from_yaml(path) == {"lr": 0.1, "sizes": [1, 2], "nested": {"name": "x"}}
    with pytest.warns(RuntimeWarning):
        assert saving(L).load_hparams_from_yaml(tmp_path / "missing.yaml") == {}
    with pytest.raises(RuntimeError):
        saving(L).save_hparams_to_yaml(tmp_path / "no_folder" / "hparams.yaml", {"lr": 0.1})


@both
def test_load_from_checkpoint_with_an_hparams_file(L, tmp_path):
    class Sized(L.LightningModule):
        def __init__(self, width=2, scale=1.0):
            super().__init__()
            self.save_hyperparameters()
            self.layer = torch.nn.Linear(width, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch).sum() * self.hparams.scale

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = L.Trainer(**QUIET, max_steps=1)
    trainer.fit(Sized(width=3), DataLoader(torch.ones(2, 3)))
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    saving(L).save_hparams_to_yaml(tmp_path / "hparams.yaml", {"width": 3, "scale": 5.0})
    loaded = Sized.load_from_checkpoint(tmp_path / "model.ckpt", hparams_file=tmp_path / "hparams.yaml")
    assert dict(loaded.hparams) == {"width": 3, "scale": 5.0}
    with pytest.raises(ValueError, match=r"\.yaml"):
        Sized.load_from_checkpoint(tmp_path / "model.ckpt", hparams_file=tmp_path / "hparams.json")


@both
def test_dataclass_fields_are_hparams(L):
    @dataclasses.dataclass(eq=False)
    class Configured(L.LightningModule):
        lr: float = 0.1
        width: int = 3
        derived: int = dataclasses.field(default=0, init=False)

        def __post_init__(self):
            super().__init__()
            self.save_hyperparameters()

    assert dict(Configured(lr=0.5).hparams) == {"lr": 0.5, "width": 3}


@both
def test_ignore_in_a_subclass(L):
    class Base(L.LightningModule):
        def __init__(self, a=1, b=2, net=None):
            super().__init__()
            self.save_hyperparameters(ignore=["net"])

    class WithMore(Base):
        def __init__(self, a=1, b=2, net=None, c=3):
            super().__init__(a, b, net)

    class Resaves(Base):
        def __init__(self, c=3, **kwargs):
            super().__init__(**kwargs)
            self.save_hyperparameters(ignore="net")

    assert dict(WithMore(a=5, net=torch.nn.Linear(1, 1)).hparams) == {"a": 5, "b": 2, "c": 3}
    assert dict(Resaves(c=4, a=7, net=torch.nn.Linear(1, 1)).hparams) == {"a": 7, "b": 2, "c": 4}
