"""BasePredictionWriter: write predictions as they are made (per batch), once at the end (per epoch), or both,
instead of keeping them in memory; subclass it and implement the `write_on_*` methods you use."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch.utils.data import IterableDataset, RandomSampler

from loops.callbacks.callback import Callback
from loops.trainer.router import pulls_batches

if TYPE_CHECKING:
    from loops.trainer.trainer import Trainer

_INTERVALS = ("batch", "epoch", "batch_and_epoch")


class BasePredictionWriter(Callback):
    """`write_interval`: "batch", "epoch" or "batch_and_epoch". `batch_indices` are the dataset indices of each
    batch's samples on this process (None when the loader's sampler cannot tell them). A `predict_step` taking
    `dataloader_iter` is refused, as in Lightning: the writer cannot tell which batches one call fetched."""

    def __init__(self, write_interval: str = "batch") -> None:
        if write_interval not in _INTERVALS:
            raise ValueError(f"BasePredictionWriter(write_interval={write_interval!r}) is not valid; accepted: "
                             f"{list(_INTERVALS)}")
        self.interval = write_interval
        self._indices: list[list[list[int]] | None] = []  # per loader: each batch's dataset indices
        self._predictions: list[list[Any]] = []

    def write_on_batch_end(self, trainer: Trainer, pl_module: Any, prediction: Any, batch_indices: list[int] | None,
                           batch: Any, batch_idx: int, dataloader_idx: int) -> None:
        raise NotImplementedError(f"{type(self).__name__}(write_interval={self.interval!r}) must implement "
                                  "write_on_batch_end")

    def write_on_epoch_end(self, trainer: Trainer, pl_module: Any, predictions: list[Any],
                           batch_indices: list[Any]) -> None:
        """`predictions`: the batch outputs (a list per loader when several); `batch_indices`: per loader, each
        batch's dataset indices."""
        raise NotImplementedError(f"{type(self).__name__}(write_interval={self.interval!r}) must implement "
                                  "write_on_epoch_end")

    def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        if stage == "predict" and pulls_batches(pl_module.predict_step):
            raise NotImplementedError(f"{type(self).__name__} does not support a predict_step(self, dataloader_iter) "
                                      "(nor does Lightning's): the step fetches its own batches, so which samples "
                                      "a prediction belongs to is not known; take a batch argument instead")

    def on_predict_start(self, trainer: Trainer, pl_module: Any) -> None:
        loaders = trainer.run_state.set_up_loaders["predict"]  # this process's shard of each loader
        self._indices = [_batch_indices(loader) for loader in loaders]
        self._predictions = [[] for _ in loaders]

    def on_predict_batch_end(self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                             dataloader_idx: int = 0) -> None:
        if self.interval != "batch":
            self._predictions[dataloader_idx].append(outputs)
        if self.interval != "epoch":
            self.write_on_batch_end(trainer, pl_module, outputs, self._indices_of(dataloader_idx, batch_idx), batch,
                                    batch_idx, dataloader_idx)

    def on_predict_epoch_end(self, trainer: Trainer, pl_module: Any) -> None:
        if self.interval == "batch":
            return
        predictions = self._predictions[0] if len(self._predictions) == 1 else self._predictions
        done = [len(p) for p in self._predictions]
        indices = [None if loader is None else loader[:n] for loader, n in zip(self._indices, done, strict=False)]
        self.write_on_epoch_end(trainer, pl_module, predictions, indices)
        self._predictions = []

    def _indices_of(self, dataloader_idx: int, batch_idx: int) -> list[int] | None:
        loader = self._indices[dataloader_idx]
        return loader[batch_idx] if loader is not None and batch_idx < len(loader) else None


def _batch_indices(loader: Any) -> list[list[int]] | None:
    """The dataset indices of each batch, read from the loader's batch sampler when its order is fixed. An
    IterableDataset has none (its loader's batch sampler counts forever)."""
    batch_sampler = getattr(loader, "batch_sampler", None)
    sampler = getattr(batch_sampler, "sampler", None)
    if batch_sampler is None or getattr(sampler, "shuffle", False) or isinstance(sampler, RandomSampler) \
            or isinstance(getattr(loader, "dataset", None), IterableDataset):
        return None
    return [list(batch) for batch in batch_sampler]
