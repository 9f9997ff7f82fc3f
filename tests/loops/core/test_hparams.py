"""save_hyperparameters: all init arguments, chosen names, a dict, ignore=, subclass chains, and hparams_initial."""
from argparse import Namespace

import pytest

import loops as L


class Base(L.LightningModule):
    def __init__(self, lr=0.1, layers=2, **kwargs):
        super().__init__()
        self.save_hyperparameters()


class Child(Base):
    def __init__(self, extra="x", lr=0.5):
        super().__init__(lr=lr, layers=3)


def test_all_arguments_and_kwargs():
    assert dict(Base(lr=0.2, dropout=0.1).hparams) == {"lr": 0.2, "layers": 2, "dropout": 0.1}


def test_subclass_chain_collects_every_init():
    model = Child()
    assert dict(model.hparams) == {"lr": 0.5, "layers": 3, "extra": "x"}
    assert model.hparams.extra == "x"


def test_names_dict_namespace_ignore():
    class Pick(L.LightningModule):
        def __init__(self, a=1, b=2, c=3):
            super().__init__()
            self.save_hyperparameters("a", "c")

    assert dict(Pick().hparams) == {"a": 1, "c": 3}

    class Ignore(L.LightningModule):
        def __init__(self, a=1, net=None):
            super().__init__()
            self.save_hyperparameters(ignore="net")

    assert dict(Ignore().hparams) == {"a": 1}

    class FromDict(L.LightningModule):
        def __init__(self, config):
            super().__init__()
            self.save_hyperparameters(config)

    assert dict(FromDict({"k": 1}).hparams) == {"k": 1}
    assert dict(FromDict(Namespace(k=2)).hparams) == {"k": 2}

    class Wrong(L.LightningModule):
        def __init__(self, a=1):
            super().__init__()
            self.save_hyperparameters("b")

    with pytest.raises(ValueError, match=r"\['b'\].*arguments: \['a'\]"):
        Wrong()


def test_hparams_initial_is_untouched_by_edits():
    model = Base()
    model.hparams.lr = 9.0
    assert model.hparams.lr == 9.0 and model.hparams_initial.lr == 0.1


def test_datamodule_hparams():
    class Data(L.LightningDataModule):
        def __init__(self, batch_size=8):
            super().__init__()
            self.save_hyperparameters()

    assert Data(4).hparams.batch_size == 4
