"""`fabric.accumulate` and the Trainer's accumulation. The distributed cases share one launch of
tests/accumulation_worker.py on 2 gloo processes (torchrun); the windowing cases run in this process."""
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from fabric_kit import Fabric
from tests.helpers.processes import TORCHRUN_TWO

WORKER = Path(__file__).with_name("accumulation_worker.py")
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def ranks(run_ranks, tmp_path_factory):
    out = tmp_path_factory.mktemp("accumulation")
    _, results = run_ranks([*TORCHRUN_TWO, WORKER, out], out, timeout=600)
    return results


def _max_difference(left, right):
    return max((a - b).abs().max().item() for a, b in zip(left, right, strict=True))


def test_item_weighted_gradient_is_the_global_batch_gradient(ranks):
    for result in ranks:
        items = result["items"]
        assert len(items["grads"]) == 2  # a full window and one the end of the data cut short
        for window, reference in zip(items["grads"], result["reference"], strict=True):
            assert _max_difference(window, reference) <= TOLERANCE
        # the item counts are the micro-batch's own and the window's over both ranks
        assert [m[3] for m in items["micro"]] == [[3, 1, 4, 2, 5], [1, 6, 2, 3, 1]][result["rank"]]
        assert [m[4] for m in items["micro"]] == [17, 17, 17, 11, 11]


def test_step_count_mode_is_not_item_weighted(ranks):
    """Dividing by the number of micro-batches gives another gradient when their item counts differ (what the
    items mode corrects)."""
    for result in ranks:
        assert _max_difference(result["steps"]["grads"][0], result["reference"][0]) > 1e-3


def test_windows_sync_once_and_end_with_the_data(ranks):
    for result in ranks:
        for mode in ("items", "steps"):
            micro = [(index, size, sync) for index, size, sync, _, _ in result[mode]["micro"]]
            # without items to count, a window's end is seen one batch ahead: the cut-short size at its end
            cut = 2 if mode == "items" else 3
            assert micro == [(0, 3, False), (1, 3, False), (2, 3, True), (0, cut, False), (1, 2, True)]


def test_gradients_all_reduced_once_per_window(ranks):
    for result in ranks:
        buckets = result["buckets_per_sync"]
        assert buckets >= 1
        for mode, count_reductions in (("items", 1), ("steps", 0)):
            counted = result[mode]
            assert counted["gradient_syncs"] == 2 * buckets  # DDP's comm hook: two windows, nothing between
            # every torch.distributed.all_reduce: the hook's, plus one item count per window in items mode
            assert counted["all_reduces"] == 2 * buckets + 2 * count_reductions


def test_trainer_step_count_matches_lightning_accumulate_grad_batches(ranks):
    for result in ranks:
        assert _max_difference(result["loops_steps"], result["lightning_steps"]) <= TOLERANCE
        assert result["lightning_counts"] == [[3, 1, 4, 2, 5], [1, 6, 2, 3, 1]][result["rank"]]


def test_trainer_item_weighted_steps_on_the_global_batch_mean(ranks):
    for result in ranks:
        assert result["item_counts_seen"] == [[3, 1, 4, 2, 5], [1, 6, 2, 3, 1]]
        assert _max_difference(result["loops_items"], result["reference_items"]) <= TOLERANCE
        assert _max_difference(result["loops_items"], result["loops_steps"]) > 1e-3
    assert _max_difference(ranks[0]["loops_items"], ranks[1]["loops_items"]) == 0


def test_fsdp_item_weighted_gradient_and_one_reduction_per_window(ranks):
    for result in ranks:
        fsdp = result["fsdp"]
        for window, reference in zip(fsdp["grads"], fsdp["reference"], strict=True):
            assert _max_difference(window, reference) <= TOLERANCE
        assert fsdp["reductions_per_sync"] >= 1
        # the gradients' reductions once per window, and the two windows' item counts
        assert fsdp["reductions"] == 2 * fsdp["reductions_per_sync"] + 2


# -- one process -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fabric_model():
    fabric = Fabric(accelerator="cpu", devices=1)
    return fabric, fabric.setup(nn.Linear(2, 1))


def _windows(fabric, model, batches, window, **kwargs):
    return [(m.index, m.is_last) for m, _ in fabric.accumulate(model, batches, window, **kwargs)]


@pytest.mark.parametrize("num_items", [None, len])
def test_windows_are_cut_by_the_data(fabric_model, num_items):
    fabric, model = fabric_model
    assert _windows(fabric, model, [[0]] * 4, 2, num_items=num_items) == [(0, False), (1, True)] * 2
    assert _windows(fabric, model, [[0]] * 3, 2, num_items=num_items) == [(0, False), (1, True), (0, True)]
    assert _windows(fabric, model, [], 2, num_items=num_items) == []
    # a resumed loop: the first window already ran 2 of its 3 micro-batches
    assert _windows(fabric, model, [[0]] * 3, 3, num_items=num_items, offset=2) == [(2, True), (0, False), (1, True)]


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 5), max_size=12), window=st.integers(1, 5), offset=st.integers(0, 4),
       weighted=st.booleans())
def test_windows_partition_the_batches(fabric_model, sizes, window, offset, weighted):
    """Every batch once, in order; each window ends exactly once (with the data at the latest), holds at most
    `window` micro-batches, and in items mode its weights sum to one (nothing dropped, nothing counted twice)."""
    offset %= window
    fabric, model = fabric_model
    batches = [[0] * size for size in sizes]
    seen = list(fabric.accumulate(model, batches, window, num_items=len if weighted else None, offset=offset))
    assert [batch for _, batch in seen] == batches
    ends = [i for i, (micro, _) in enumerate(seen) if micro.is_last]
    assert (ends[-1] == len(seen) - 1) if seen else not ends
    starts = [0, *(end + 1 for end in ends[:-1])] if ends else []
    for number, (start, end) in enumerate(zip(starts, ends, strict=True)):
        micro_batches = [micro for micro, _ in seen[start:end + 1]]
        first = offset if number == 0 else 0
        assert [m.index for m in micro_batches] == list(range(first, first + len(micro_batches)))
        assert first + len(micro_batches) <= window
        assert len(micro_batches) == window - first or end == len(seen) - 1  # only the data's end cuts one short
        if weighted and micro_batches[0].window_items:
            assert sum(m.scale(torch.tensor(1.0)).item() for m in micro_batches) == pytest.approx(1.0)


def test_step_count_loss_is_divided_by_the_window(fabric_model):
    fabric, model = fabric_model
    micro, _ = next(iter(fabric.accumulate(model, [0], 4)))
    assert micro.scale(torch.tensor(2.0)).item() == 0.5  # also in a window the data cut short, as in Lightning


def test_item_weights(fabric_model):
    fabric, model = fabric_model
    scales = [m.scale(torch.tensor(1.0)).item()
              for m, _ in fabric.accumulate(model, [[0] * 3, [0], [], [0] * 2], 3, num_items=len)]
    assert scales == [0.75, 0.25, 0.0, 1.0]  # the empty micro-batch weighs nothing


def test_step_count_fetches_no_batch_past_a_window_end(fabric_model):
    """Where the optimizer steps, the loader has yielded exactly the window (a checkpoint there resumes exactly)."""
    fabric, model = fabric_model
    fetched = []

    def batches():
        for index in range(4):
            fetched.append(index)
            yield index

    for micro, batch in fabric.accumulate(model, batches(), 2):
        if micro.is_last:
            assert fetched[-1] == batch


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"window": 0}, ValueError, r"window=0"),
    ({"window": 2, "offset": 2}, ValueError, r"offset=2"),
    ({"window": 2, "num_items": 3}, TypeError, r"num_items=.*int"),
])
def test_bad_arguments_are_named(fabric_model, kwargs, error, message):
    fabric, model = fabric_model
    with pytest.raises(error, match=message):
        fabric.accumulate(model, [0], **kwargs)


@pytest.mark.parametrize("count", [-1, 1.5, torch.tensor([1, 2]), torch.tensor(1.0)])
def test_bad_item_counts_are_named(fabric_model, count):
    fabric, model = fabric_model
    with pytest.raises((TypeError, ValueError), match="num_items"):
        list(fabric.accumulate(model, [0], 2, num_items=lambda batch: count))


def test_needs_the_set_up_model(fabric_model):
    fabric, _ = fabric_model
    with pytest.raises(TypeError, match="fabric.setup"):
        fabric.accumulate(nn.Linear(1, 1), [0], 2)
