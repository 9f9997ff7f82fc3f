"""MNIST for the demos: 28x28 grey images of digits with their labels, as Lightning's demo `MNIST` and
`MNISTDataModule`. The images are read from a local copy; without one, synthetic images of the same shapes."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, random_split

from loops.core.datamodule import LightningDataModule
from loops.demos.synthetic import generator, warn_synthetic

SPLITS = {True: ("training.pt", 60_000), False: ("test.pt", 10_000)}


class MNIST(Dataset[tuple[Tensor, int]]):
    """`(image, label)`: a float `(1, 28, 28)` image, normalised by `normalize=(mean, std)` unless None, and its
    digit. Read from `root/MNIST/complete/training.pt` or `test.pt` (a `torch.save`d `(images, labels)` pair of
    uint8 `(n, 28, 28)` and int64 `(n,)` tensors, the files Lightning downloads); without them, as many synthetic
    images as the real split has, with a warning. `download=True` downloads nothing."""

    def __init__(self, root: str | Path, train: bool = True, normalize: tuple[float, float] | None = (0.1307, 0.3081),
                 download: bool = True) -> None:
        super().__init__()
        name, size = SPLITS[train]
        self.path = Path(root) / "MNIST" / "complete" / name
        self.train, self.normalize = train, normalize
        if self.path.is_file():
            self.data, self.targets = torch.load(self.path, weights_only=True)
        else:
            warn_synthetic("MNIST", self.path, download)
            random = generator()
            self.data = torch.randint(256, (size, 28, 28), dtype=torch.uint8, generator=random)
            self.targets = torch.randint(10, (size,), generator=random)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image = self.data[index].float().unsqueeze(0)
        if self.normalize is not None:
            mean, std = self.normalize
            image = (image - mean) / std
        return image, int(self.targets[index])

    def __len__(self) -> int:
        return len(self.data)


class MNISTDataModule(LightningDataModule):
    """MNIST's training split less `val_split` images (chosen with `seed`) to train on, those to validate on, and
    the test split to test on; loaders of `batch_size` that drop the last partial batch. `normalize=True` maps
    pixel values to [-1, 1]; otherwise they stay in [0, 1]."""

    name = "mnist"

    def __init__(self, data_dir: str = "./data", val_split: int = 5000, num_workers: int = 16,
                 normalize: bool = False, seed: int = 42, batch_size: int = 32) -> None:
        super().__init__()
        self.data_dir, self.val_split, self.num_workers = data_dir, val_split, num_workers
        self.normalize, self.seed, self.batch_size = normalize, seed, batch_size

    @property
    def num_classes(self) -> int:
        return 10

    def _split(self, train: bool) -> MNIST:
        # Pixels / 255 (as torchvision's ToTensor), then optionally (x - 0.5) / 0.5.
        return MNIST(self.data_dir, train=train, normalize=(127.5, 127.5) if self.normalize else (0.0, 255.0))

    def setup(self, stage: str) -> None:
        dataset = self._split(train=True)
        sizes = [len(dataset) - self.val_split, self.val_split]
        self.dataset_train, self.dataset_val = random_split(dataset, sizes, torch.Generator().manual_seed(self.seed))

    def _loader(self, dataset: Dataset[tuple[Tensor, int]], shuffle: bool) -> DataLoader[tuple[Tensor, int]]:
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          drop_last=True, pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader[tuple[Tensor, int]]:
        return self._loader(self.dataset_train, shuffle=True)

    def val_dataloader(self) -> DataLoader[tuple[Tensor, int]]:
        return self._loader(self.dataset_val, shuffle=False)

    def test_dataloader(self) -> DataLoader[tuple[Tensor, int]]:
        return self._loader(self._split(train=False), shuffle=False)
