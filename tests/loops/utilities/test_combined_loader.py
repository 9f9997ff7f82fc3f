"""CombinedLoader as an iterable and as each stage's data, each compared with Lightning 2.6's on the same loaders."""
import collections

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

import loops
from loops.utilities import CombinedLoader
from tests.helpers.both_trainers import QUIET, pl, quiet  # noqa: F401

TheirCombinedLoader = pl.utilities.CombinedLoader

MODES = ["min_size", "max_size_cycle", "max_size", "sequential"]


def plain(value):
    """Tensors as lists, collections kept, so two runs' batches compare with ==."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value) if not hasattr(value, "_fields") else \
            type(value)(*map(plain, value))
    return value


def passes(cls, iterables, mode, limits=None):
    """Two passes of `cls(iterables, mode)`: each its (batch, batch_idx, dataloader_idx) list and length."""
    combined = cls(iterables, mode)
    if limits is not None:
        combined.limits = limits
    out = []
    for _ in range(2):
        iter(combined)
        out.append((len(combined), [plain(step) for step in combined]))
    return out


Pair = collections.namedtuple("Pair", "a b")


def structures(sizes):
    loaders = [DataLoader(range(n), batch_size=2) for n in sizes]
    return [loaders, tuple(loaders), dict(zip("abc", loaders, strict=False)),
            {"x": loaders[:1], "y": {"z": loaders[1:]}}, collections.OrderedDict(zip("cba", loaders, strict=False))]


@pytest.mark.parametrize("mode", MODES)
def test_each_mode_iterates_as_lightnings(mode):
    for iterables in [*structures([3, 7, 4]), DataLoader(range(5), batch_size=2), Pair(range(3), range(5)),
                      [[1, 2, 3], DataLoader(range(4))]]:
        assert passes(CombinedLoader, iterables, mode) == passes(TheirCombinedLoader, iterables, mode), iterables


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(MODES), st.lists(st.integers(0, 9), min_size=1, max_size=3),
       st.lists(st.integers(0, 6), min_size=3, max_size=3))
def test_lengths_and_limits_as_lightnings(mode, sizes, limits):
    loaders = [DataLoader(range(n), batch_size=2) for n in sizes]
    limits = limits[:len(sizes)]
    assert passes(CombinedLoader, loaders, mode, limits) == passes(TheirCombinedLoader, loaders, mode, limits)


def test_attributes_and_errors():
    a, b = DataLoader(range(4), batch_size=2, shuffle=True), DataLoader(range(6), batch_size=3)
    combined = CombinedLoader({"a": a, "b": b}, "max_size_cycle")
    assert combined.iterables == {"a": a, "b": b} and combined.flattened == [a, b]
    assert combined.sampler == {"a": a.sampler, "b": b.sampler}
    assert combined.batch_sampler == {"a": a.batch_sampler, "b": b.batch_sampler}
    c = DataLoader(range(2))
    combined.flattened = [c, b]
    assert combined.iterables == {"a": c, "b": b}
    with pytest.raises(ValueError, match="takes 2 iterables, one per iterable it holds; got 1"):
        combined.flattened = [c]
    with pytest.raises(ValueError, match="one limit per iterable \\(2\\) or one number for all; got 3"):
        combined.limits = [1, 2, 3]
    combined.limits = 1
    assert combined.limits == [1, 1]
    with pytest.raises(ValueError, match="mode='longest'\\) is not a mode; accepted: min_size, max_size_cycle"):
        CombinedLoader([a], "longest")
    endless = CombinedLoader([iter(range(3))], "max_size")  # an iterator has no length
    with pytest.raises(TypeError, match="no length"):
        len(endless)


class Recorder:
    """A LightningModule of either Trainer (`L`) recording what each step and batch hook receives."""

    @staticmethod
    def build(L):
        class Model(L.LightningModule):
            def __init__(self):
                super().__init__()
                self.layer = torch.nn.Linear(1, 1)
                self.seen = collections.defaultdict(list)

            def training_step(self, batch, batch_idx):
                self.seen["train"].append((plain(batch), batch_idx))
                return self.layer(torch.ones(1, 1)).sum()

            def on_train_batch_end(self, outputs, batch, batch_idx):
                self.seen["train_end"].append(batch_idx)

            def validation_step(self, batch, batch_idx, dataloader_idx=0):
                self.seen["val"].append((plain(batch), batch_idx, dataloader_idx))

            def test_step(self, batch, batch_idx, dataloader_idx=0):
                self.seen["test"].append((plain(batch), batch_idx, dataloader_idx))
                self.log("n", float(batch_idx))

            def predict_step(self, batch, batch_idx, dataloader_idx=0):
                return plain(batch), batch_idx, dataloader_idx

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.1)

        return Model()


def loaders(n=(4, 6)):
    return [DataLoader(torch.arange(k), batch_size=2) for k in n]


def run_stages(L):
    """fit on a list (max_size_cycle), a dict and each CombinedLoader mode; validation and test over several
    loaders (sequential, with dataloader_idx) and over a max_size_cycle CombinedLoader (combined batches, none);
    predict over several. Returns what the steps saw and what the stages returned."""
    combined = L.utilities.CombinedLoader
    seen, results = {}, {}
    runs = {"list": loaders(), "dict": dict(zip("ab", loaders(), strict=True)),
            **{mode: combined(loaders(), mode) for mode in ("min_size", "max_size", "max_size_cycle")}}
    for name, train in runs.items():
        model = Recorder.build(L)
        L.Trainer(max_epochs=2, limit_val_batches=2, num_sanity_val_steps=1, **QUIET).fit(model, train, loaders())
        seen[name] = dict(model.seen)
    model = Recorder.build(L)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=0.5, limit_val_batches=0, **QUIET)
    trainer.fit(model, combined({"a": loaders((4,)), "b": {"c": loaders((8,))}}, "max_size_cycle"))
    seen["fraction"] = (dict(model.seen), trainer.num_training_batches)
    model = Recorder.build(L)
    trainer = L.Trainer(**QUIET)
    results["test"] = trainer.test(model, loaders((2, 4, 6)), verbose=False)
    results["test_dict"] = trainer.test(model, {"x": loaders((2,)), "y": loaders((4,))}, verbose=False)
    results["test_cycle"] = trainer.test(model, combined(loaders(), "max_size_cycle"), verbose=False)
    trainer.validate(model, combined(loaders((2, 4)), "sequential"), verbose=False)
    seen["eval"] = dict(model.seen)
    results["predict"] = trainer.predict(model, loaders((2, 4)))
    results["predict_one"] = trainer.predict(model, combined(loaders((4,)), "sequential"))
    with pytest.raises(ValueError, match="sequential"):
        L.Trainer(**QUIET).fit(Recorder.build(L), combined(loaders(), "sequential"))
    with pytest.raises(ValueError, match="sequential"):
        trainer.predict(model, combined(loaders(), "max_size_cycle"))
    return seen, results


def test_the_trainers_stages_see_what_lightnings_see(quiet):  # noqa: F811
    assert run_stages(loops) == run_stages(pl)
