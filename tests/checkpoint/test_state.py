"""What fabric.save records besides the user's state (RNG, precision) and the dataloader's position, in-process."""
import random

import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

from fabric_kit import Fabric, seed_everything
from fabric_kit.checkpoint import load_file, rng
from fabric_kit.data import DistributedShardSampler


def _draws():
    return random.random(), np.random.rand(), np.random.randn(), torch.rand(3).tolist()


def test_rng_states_round_trip():
    seed_everything(7)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    state = rng.capture()
    expected = _draws()
    rng.restore(state)
    assert _draws() == expected


def test_rng_states_of_earlier_checkpoints_still_restore():
    """Before python's state was a tensor, checkpoints held random.getstate() itself (lists after some
    serialisers' round trips)."""
    seed_everything(7)
    state = {**rng.capture(), "python": [list(part) if isinstance(part, tuple) else part
                                         for part in random.getstate()]}
    expected = _draws()
    rng.restore(state)
    assert _draws() == expected


def test_rng_states_are_tensors_where_they_are_long():
    python = rng.capture()["python"]
    assert isinstance(python["state"], torch.Tensor) and python["state"].numel() == 625


def test_rank_without_saved_state_gets_a_deterministic_distinct_derivation():
    seed_everything(7)
    saved = {0: rng.capture(), 1: rng.capture()}
    draws = {}
    for rank in (2, 3, 2):
        rng.for_rank(saved, rank)
        draws.setdefault(rank, []).append(_draws())
    assert draws[2][0] == draws[2][1]
    assert draws[2][0] != draws[3][0]


def test_fabric_load_restores_rng_and_precision_state(tmp_path):
    fabric = Fabric(accelerator="cpu", devices=1, precision="16-mixed")
    scaler = fabric.strategy.precision.scaler
    scaler.load_state_dict({**scaler.state_dict(), "scale": 1024.0})  # as if the loss scale had backed off
    model = torch.nn.Linear(2, 2)
    fabric.save(tmp_path / "a.ckpt", {"model": model})
    expected = _draws()
    stored = load_file(tmp_path / "a.ckpt")["__fabric_kit__"]
    assert stored["precision"]["scaler"]["scale"] == 1024.0 and set(stored["rng"]) == {0}

    other = Fabric(accelerator="cpu", devices=1, precision="16-mixed")
    remainder = other.load(tmp_path / "a.ckpt", {"model": torch.nn.Linear(2, 2)})
    assert remainder == {}
    assert other.strategy.precision.scaler.get_scale() == 1024.0
    assert _draws() == expected


def test_reserved_key_is_refused(tmp_path):
    with pytest.raises(ValueError, match="__fabric_kit__"):
        Fabric(accelerator="cpu", devices=1).save(tmp_path / "a.ckpt", {"__fabric_kit__": 1})


def _loader(fabric, **kwargs):
    return fabric.setup_dataloaders(DataLoader(list(range(20)), batch_size=3, shuffle=True, **kwargs))


def test_one_process_loader_resumes_mid_epoch_and_later_epochs_shuffle_alike(tmp_path):
    seed_everything(3)
    fabric = Fabric(accelerator="cpu", devices=1)
    loader = _loader(fabric)
    first = iter(loader)
    seen = [next(first).tolist() for _ in range(2)]
    fabric.save(tmp_path / "a.ckpt", {"loader": loader})
    expected = [b.tolist() for b in first] + [b.tolist() for b in loader]  # rest of epoch 0, then epoch 1
    assert sorted(sum(seen + expected[:5], [])) == list(range(20))

    resumed = _loader(Fabric(accelerator="cpu", devices=1))
    Fabric(accelerator="cpu", devices=1).load(tmp_path / "a.ckpt", {"loader": resumed})
    assert [b.tolist() for b in resumed] + [b.tolist() for b in resumed] == expected


def test_new_pass_after_an_unfinished_one_starts_the_next_epoch():
    loader = _loader(Fabric(accelerator="cpu", devices=1))
    next(iter(loader))
    next(iter(loader))
    assert loader.state_dict()["epoch"] == 1


def test_loader_that_cannot_skip_refuses_a_mid_epoch_position(tmp_path):
    fabric = Fabric(accelerator="cpu", devices=1)
    custom = DataLoader(list(range(8)), batch_sampler=_Batches(SequentialSampler(range(8)), 2, False))
    loader = fabric.setup_dataloaders(custom)
    with pytest.raises(ValueError, match="cannot resume .* middle of epoch 0"):
        loader.load_state_dict({"epoch": 0, "samples": 4, "batches": 2, "seed": None})


class _Batches(BatchSampler):
    """A custom batch sampler, which setup_dataloaders cannot re-shard."""


@pytest.mark.parametrize("start", [0, 5, 12, 30])
@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_sampler_start_reshards_the_rest_of_the_epoch_over_any_rank_count(start, ranks):
    order = list(DistributedShardSampler(range(30), 1, 0, shuffle=True, seed=4))
    for even in (False, True):
        samplers = [DistributedShardSampler(range(30), ranks, r, shuffle=True, seed=4, even_shards=even)
                    for r in range(ranks)]
        for sampler in samplers:
            sampler.set_epoch(0, start=start)
        shards = [list(sampler) for sampler in samplers]
        assert [len(shard) for shard in shards] == [len(sampler) for sampler in samplers]
        if even:  # equal shards, padded with fewer than `ranks` repeats
            assert set(sum(shards, [])) == set(order[start:]) and len({len(shard) for shard in shards}) == 1
        else:  # an exact partition of what the epoch has left
            assert sorted(sum(shards, [])) == sorted(order[start:])
