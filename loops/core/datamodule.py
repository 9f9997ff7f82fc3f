"""LightningDataModule: the data side of an experiment (download, split, loaders) in one reusable class."""
from __future__ import annotations

import inspect
import os
from collections.abc import Iterable, Sized
from typing import TYPE_CHECKING, Any

from torch.utils.data import DataLoader, Dataset, IterableDataset

from loops.core.hooks import DataHooks
from loops.core.hparams import HyperparametersMixin
from loops.core.saving import (
    CHECKPOINT_HYPER_PARAMS_KEY,
    CHECKPOINT_HYPER_PARAMS_NAME,
    CHECKPOINT_HYPER_PARAMS_TYPE,
    load_datamodule_from_checkpoint,
)

if TYPE_CHECKING:
    from loops.trainer.trainer import Trainer


class LightningDataModule(HyperparametersMixin, DataHooks):
    """Override `prepare_data`, `setup(stage)` and the `*_dataloader` methods you need."""

    # Where a checkpoint holds the datamodule's hyperparameters (Lightning's keys).
    CHECKPOINT_HYPER_PARAMS_KEY = f"datamodule_{CHECKPOINT_HYPER_PARAMS_KEY}"
    CHECKPOINT_HYPER_PARAMS_NAME = f"datamodule_{CHECKPOINT_HYPER_PARAMS_NAME}"
    CHECKPOINT_HYPER_PARAMS_TYPE = f"datamodule_{CHECKPOINT_HYPER_PARAMS_TYPE}"

    name: str | None = None

    def __init__(self) -> None:
        super().__init__()
        self.trainer: Trainer | None = None

    def state_dict(self) -> dict[str, Any]:
        """State saved in checkpoints under the class name (e.g. a split seed or a curriculum position)."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass

    def on_exception(self, exception: BaseException) -> None: ...

    def __str__(self) -> str:
        """Lightning's summary of the loaders: one line per stage, `{Train dataloader: size=N}` (the dataset's
        length, `NA` without one), `1. size=N ; 2. size=M` for several loaders, `None` where the method is
        missing or fails."""
        lines = []
        for label, method in (("Train", "train_dataloader"), ("Validation", "val_dataloader"),
                              ("Test", "test_dataloader"), ("Predict", "predict_dataloader")):
            try:
                loaders = getattr(self, method)()
            except Exception:  # a missing or failing method is shown as None, as Lightning does
                text = "None"
            else:
                if isinstance(loaders, DataLoader):
                    text = f"size={_size(loaders)}"
                else:
                    several = loaders.values() if isinstance(loaders, dict) else loaders
                    text = " ; ".join(f"{i}. size={_size(loader)}" for i, loader in enumerate(several, start=1))
            lines.append(f"{{{label} dataloader: {text}}}")
        return os.linesep.join(lines)

    @classmethod
    def from_datasets(cls, train_dataset: Dataset | Iterable[Dataset] | None = None,
                      val_dataset: Dataset | Iterable[Dataset] | None = None,
                      test_dataset: Dataset | Iterable[Dataset] | None = None,
                      predict_dataset: Dataset | Iterable[Dataset] | None = None, batch_size: int = 1,
                      num_workers: int = 0, **datamodule_kwargs: Any) -> LightningDataModule:
        """A datamodule serving the given datasets (a list gives several loaders) with Lightning's loaders: training
        batches shuffle (except an IterableDataset's), memory is pinned. `batch_size` / `num_workers` also go to
        the class's `__init__` when it takes them (Lightning's rule)."""

        def loaders(datasets: Any, shuffle: bool) -> Any:
            if isinstance(datasets, (list, tuple)):
                return [loaders(ds, shuffle) for ds in datasets]
            if isinstance(datasets, dict):
                return {key: loaders(ds, shuffle) for key, ds in datasets.items()}
            return DataLoader(datasets, batch_size=batch_size, shuffle=shuffle and not isinstance(
                datasets, IterableDataset), num_workers=num_workers, pin_memory=True)

        parameters = inspect.signature(cls.__init__).parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
        special = {key: value for key, value in (("batch_size", batch_size), ("num_workers", num_workers))
                   if takes_any or key in parameters}
        datamodule = cls(**datamodule_kwargs, **special)
        for stage, dataset, shuffle in (("train", train_dataset, True), ("val", val_dataset, False),
                                        ("test", test_dataset, False), ("predict", predict_dataset, False)):
            if dataset is not None:
                setattr(datamodule, f"{stage}_dataloader", lambda d=dataset, s=shuffle: loaders(d, s))
        return datamodule

    load_from_checkpoint: classmethod[Any, ..., Any] = classmethod(load_datamodule_from_checkpoint)


def _size(loader: Any) -> str:
    dataset = getattr(loader, "dataset", None)
    return str(len(dataset)) if isinstance(dataset, Sized) else "NA"
