"""`has_len`: whether a loader (or dataset) can say how many batches (or samples) it has, as Lightning's."""
from __future__ import annotations

from typing import Any

from torch.utils.data import IterableDataset

from fabric_kit.rank_zero import rank_zero_warn


def has_len(data: Any) -> bool:
    """Whether `len(data)` works (a `TypeError` or `NotImplementedError` from it means no). Warns when the length
    is 0, and when a loader loads an `IterableDataset`: with several workers each one iterates the whole
    dataset unless it shards itself, so its `__len__` may not be the number of items seen."""
    try:
        length = len(data)
    except (TypeError, NotImplementedError):
        return False
    if length == 0:
        rank_zero_warn(f"`{type(data).__name__}` has length 0; check that this is intended")
    if isinstance(getattr(data, "dataset", None), IterableDataset):
        rank_zero_warn(f"`{type(data).__name__}` loads an IterableDataset with `__len__`: with several workers the "
                       "length is right only if each worker reads its own part of the data")
    return True
