"""Lightning's demo models and data (`lightning.pytorch.demos`), for examples and quick checks. Nothing is ever
downloaded: the datasets Lightning downloads (`WikiText2`, `MNIST`) read a local copy when there is one and otherwise
give synthetic data of the same shapes, with a warning."""
from loops.demos.boring_classes import (
    BoringDataModule,
    BoringModel,
    DemoModel,
    ManualOptimBoringModel,
    RandomDataset,
    RandomIterableDataset,
)
from loops.demos.mnist_datamodule import MNIST, MNISTDataModule
from loops.demos.transformer import LightningTransformer, Transformer, WikiText2

__all__ = ["MNIST", "BoringDataModule", "BoringModel", "DemoModel", "LightningTransformer", "MNISTDataModule",
           "ManualOptimBoringModel", "RandomDataset", "RandomIterableDataset", "Transformer", "WikiText2"]
