import dataclasses
import itertools
from collections import OrderedDict, defaultdict, namedtuple
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fabric_kit.collections import apply_to_collection, convert_tensors, move_to_device

Point = namedtuple("Point", ["x", "y"])
_counter = itertools.count()


@dataclasses.dataclass
class Pair:
    first: Any
    second: Any


@dataclasses.dataclass(frozen=True)
class FrozenBox:
    content: Any
    serial: int = dataclasses.field(init=False, default=-1)

    def __post_init__(self):
        # Running __post_init__ again (re-calling the constructor) would change this, so it detects rebuilding.
        object.__setattr__(self, "serial", next(_counter))


class Opaque:
    """A non-tensor leaf without ``to``: must come back as the very same object."""


class Movable:
    def __init__(self, device=None):
        self.device = device

    def to(self, device):
        return Movable(device)


# ---------------------------------------------------------------- structural fingerprint


def fingerprint(data, describe):
    """Everything that must survive a transform: container types, keys, order, factories, field names, and the
    identity of every non-tensor leaf. Tensors appear as ``describe(tensor)``."""
    if isinstance(data, torch.Tensor):
        return ("tensor", describe(data))
    if dataclasses.is_dataclass(data):
        fields = [(f.name, fingerprint(getattr(data, f.name), describe)) for f in dataclasses.fields(data)]
        return (type(data), fields)
    if isinstance(data, dict):
        items = [(k, fingerprint(v, describe)) for k, v in data.items()]
        return (type(data), getattr(data, "default_factory", None), items)
    if isinstance(data, (set, frozenset)):
        return (type(data), sorted(repr(fingerprint(v, describe)) for v in data))
    if isinstance(data, (list, tuple)):
        return (type(data), [fingerprint(v, describe) for v in data])
    return ("leaf", id(data))


def describe(tensor):
    return (tensor.dtype, tuple(tensor.shape), tensor.tolist())


# ---------------------------------------------------------------- strategies

tensors = st.one_of(
    st.lists(st.integers(-5, 5), max_size=3).map(lambda v: torch.tensor(v, dtype=torch.float32)),
    st.lists(st.integers(-5, 5), max_size=3).map(lambda v: torch.tensor(v, dtype=torch.int64)),
)
# Fresh objects so that identity is meaningful (small ints and interned strings would pass trivially).
opaque_leaves = st.one_of(st.builds(Opaque), st.text(max_size=3).map(lambda s: s + "!"), st.none(), st.floats(0, 1))
hashable_leaves = st.one_of(st.integers(1000, 2000), st.text(max_size=3))
keys = st.text("abcdef", min_size=1, max_size=3)


def containers(children):
    return st.one_of(
        st.lists(children, max_size=3),
        st.lists(children, max_size=3).map(tuple),
        st.builds(Point, children, children),
        st.dictionaries(keys, children, max_size=3),
        st.dictionaries(keys, children, max_size=3).map(OrderedDict),
        st.dictionaries(keys, children, max_size=3).map(lambda d: defaultdict(list, d)),
        st.builds(Pair, children, children),
        st.builds(FrozenBox, children),
        st.sets(hashable_leaves, max_size=3),
        st.frozensets(st.one_of(hashable_leaves, tensors), max_size=3),
    )


structures = st.recursive(st.one_of(tensors, opaque_leaves), containers, max_leaves=12)


@settings(max_examples=200, deadline=None)
@given(structures)
def test_transform_preserves_structure_and_only_touches_tensors(data):
    out = apply_to_collection(data, torch.Tensor, torch.mul, 2)
    assert fingerprint(out, describe) == fingerprint(data, lambda t: describe(t * 2))


@settings(max_examples=200, deadline=None)
@given(structures)
def test_move_to_cpu_preserves_structure(data):
    out = move_to_device(data, "cpu")
    assert fingerprint(out, describe) == fingerprint(data, describe)


@settings(max_examples=200, deadline=None)
@given(structures)
def test_convert_tensors_casts_only_the_source_dtype(data):
    out = convert_tensors(data, torch.float32, torch.float64)
    expected = lambda t: describe(t.double() if t.dtype == torch.float32 else t)  # noqa: E731
    assert fingerprint(out, describe) == fingerprint(data, expected)


# ---------------------------------------------------------------- specific behaviour


def test_batch_of_two_tensors_keeps_its_container_type():
    x, y = torch.ones(2), torch.zeros(2, dtype=torch.long)
    assert type(move_to_device((x, y), "cpu")) is tuple
    assert type(move_to_device([x, y], torch.device("cpu"))) is list
    assert move_to_device(x, "cpu") is x


def test_arguments_are_forwarded():
    out = apply_to_collection({"a": torch.ones(1)}, torch.Tensor, torch.add, 1, alpha=3)
    assert out["a"].item() == 4


def test_dtype_may_be_a_tuple_and_a_match_is_not_recursed_into():
    data = {"n": 1, "s": "x", "l": [1, 2]}
    assert apply_to_collection(data, (int, str), repr) == {"n": "1", "s": "'x'", "l": ["1", "2"]}
    assert apply_to_collection(data, list, len) == {"n": 1, "s": "x", "l": 2}


def test_dataclass_is_rebuilt_without_rerunning_init():
    box = FrozenBox(torch.ones(1))
    out = convert_tensors(box, torch.float32, torch.float64)
    assert out is not box and type(out) is FrozenBox
    assert out.serial == box.serial  # init=False field carried over, __post_init__ not re-run
    assert out.content.dtype == torch.float64 and box.content.dtype == torch.float32  # original untouched


def test_defaultdict_keeps_factory_and_ordereddict_keeps_order():
    dd = defaultdict(list, b=torch.ones(1), a=torch.ones(1))
    out = move_to_device(dd, "cpu")
    assert type(out) is defaultdict and out.default_factory is list and list(out) == ["b", "a"]
    od = OrderedDict([("z", torch.ones(1)), ("y", 3)])
    assert list(move_to_device(od, "cpu").items())[1] == ("y", 3)


def test_move_uses_to_on_non_tensor_objects():
    out = move_to_device({"m": Movable(), "o": (o := Opaque())}, "cpu")
    assert out["m"].device == torch.device("cpu")
    assert out["o"] is o
    module = torch.nn.Linear(1, 1)
    assert move_to_device([module], "cpu")[0] is module


def test_cuda_copies_of_tensors_are_non_blocking(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *args, **kwargs: calls.append((args, kwargs)) or self)
    movable = move_to_device((torch.ones(1), Movable()), "cuda:1")[1]
    assert calls == [((torch.device("cuda:1"),), {"non_blocking": True})]
    assert movable.device == torch.device("cuda:1")


def test_cpu_copies_are_blocking(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *args, **kwargs: calls.append((args, kwargs)) or self)
    move_to_device([torch.ones(1)], "cpu")
    assert calls == [((torch.device("cpu"),), {})]


def test_bad_device_is_rejected_by_torch():
    with pytest.raises(RuntimeError, match="banana"):
        move_to_device(torch.ones(1), "banana")


def test_move_to_device_keeps_an_object_moved_in_place():
    class InPlace:
        """Its `to` moves it in place and returns None, as some batch classes do."""

        def to(self, device):
            self.device = device

    batch = InPlace()
    assert move_to_device({"batch": batch}, "cpu") == {"batch": batch}
    assert batch.device == torch.device("cpu")
