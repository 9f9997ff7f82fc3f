"""LightningDataModule: the data side of an experiment (download, split, loaders) in one reusable class."""
from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from torch.utils.data import DataLoader, Dataset

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

    @classmethod
    def from_datasets(cls, train_dataset: Dataset | Iterable[Dataset] | None = None,
                      val_dataset: Dataset | Iterable[Dataset] | None = None,
                      test_dataset: Dataset | Iterable[Dataset] | None = None,
                      predict_dataset: Dataset | Iterable[Dataset] | None = None, batch_size: int = 1,
                      num_workers: int = 0, **datamodule_kwargs: Any) -> LightningDataModule:
        """A datamodule serving the given datasets (a list gives several loaders); training batches shuffle."""

        def loaders(datasets: Any, shuffle: bool) -> Any:
            if isinstance(datasets, (list, tuple)):
                return [loaders(ds, shuffle) for ds in datasets]
            if isinstance(datasets, dict):
                return {key: loaders(ds, shuffle) for key, ds in datasets.items()}
            return DataLoader(datasets, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers)

        datamodule = cls(**datamodule_kwargs)
        for stage, dataset, shuffle in (("train", train_dataset, True), ("val", val_dataset, False),
                                        ("test", test_dataset, False), ("predict", predict_dataset, False)):
            if dataset is not None:
                setattr(datamodule, f"{stage}_dataloader", lambda d=dataset, s=shuffle: loaders(d, s))
        return datamodule

    load_from_checkpoint: classmethod[Any, ..., Any] = classmethod(load_datamodule_from_checkpoint)
