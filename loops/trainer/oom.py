"""`Trainer(on_oom="reduce")`: a batch that runs out of memory (on any rank) is run again, on every rank, as twice
as many micro-batches, cut along the batch's first dimension; the gradient of each micro-batch's mean loss is
weighed by its share of the batch's rows (or items, with `accumulate_num_items`) and only the last one
all-reduces, so the step's gradient is the batch's. Later batches keep the split: the run goes on from the same
step with a smaller micro-batch and more accumulation, on the same data in the same order. A batch that runs out
of memory at micro-batches of one row ends the run with an error.

Why a Trainer argument and not a callback: the step itself changes (the batch is cut, the sync deferred to its last
micro-batch, each attempt agreed on by the ranks before its backward all-reduces: `fabric_kit.out_of_memory`), and a
callback only sees a step from outside, after the error has unwound it."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from fabric_kit.utilities import apply_to_collection

ON_OOM = ("raise", "reduce")


def check_on_oom(value: Any) -> str:
    if value not in ON_OOM:
        raise ValueError(f"on_oom={value!r}: accepted: {ON_OOM} (\"raise\": Lightning's behaviour; \"reduce\": run "
                         "the batch again as smaller micro-batches)")
    return str(value)


def batch_rows(batch: Any) -> int:
    """The length of the first dimension every tensor of `batch` shares (what `split_batch` cuts)."""
    rows: set[int] = set()
    apply_to_collection(batch, Tensor, lambda tensor: rows.add(tensor.shape[0] if tensor.dim() else -1))
    if len(rows) != 1 or -1 in rows:
        raise TypeError(f"on_oom='reduce' cuts a batch along the first dimension of its tensors, which must all have "
                        f"the same length; this batch's tensors have first dimensions {sorted(rows)} (a scalar "
                        "counts as -1)")
    return rows.pop()


def split_batch(batch: Any, parts: int, num_items: Callable[[Any], int | Tensor] | None) -> list[tuple[Any, float]]:
    """`batch` cut into `parts` micro-batches along its first dimension (the first ones one row longer when it does
    not divide), each with its share of the batch: its rows, or its items by `num_items`, over the batch's."""
    rows = batch_rows(batch)
    parts = min(parts, rows)
    length, longer = divmod(rows, parts)
    pieces, start = [], 0
    for index in range(parts):
        stop = start + length + (index < longer)
        pieces.append(apply_to_collection(batch, Tensor, lambda tensor, a=start, b=stop: tensor[a:b]))
        start = stop
    if num_items is not None:
        counts = [int(num_items(piece)) for piece in pieces]
        if sum(counts) > 0:
            return [(piece, count / sum(counts)) for piece, count in zip(pieces, counts, strict=True)]
    return [(piece, batch_rows(piece) / rows) for piece in pieces]
