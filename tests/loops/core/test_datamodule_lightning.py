"""LightningDataModule against Lightning 2.6's: `str(datamodule)` (the summary of each stage's loaders) and the
loaders `from_datasets` builds."""
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from tests.helpers.both_trainers import both


class Stream(IterableDataset):
    def __iter__(self):
        return iter(range(3))


@both
def test_str_lists_each_stage_loaders_sizes(L):
    class Data(L.LightningDataModule):
        def train_dataloader(self):
            return DataLoader(TensorDataset(torch.zeros(6, 1)))

        def val_dataloader(self):
            return [DataLoader(TensorDataset(torch.zeros(2, 1))), DataLoader(Stream())]

        def test_dataloader(self):
            raise RuntimeError("not set up yet")

    assert str(Data()).splitlines() == ["{Train dataloader: size=6}", "{Validation dataloader: 1. size=2 ; 2. size=NA}",
                                        "{Test dataloader: None}", "{Predict dataloader: None}"]


def test_from_datasets_summary_is_lightnings():
    import loops
    from tests.helpers.both_trainers import pl

    ours, theirs = (str(L.LightningDataModule.from_datasets(TensorDataset(torch.zeros(4, 1)), batch_size=2))
                    for L in (loops, pl))
    assert ours == theirs == "\n".join(["{Train dataloader: size=4}", "{Validation dataloader: None}",
                                        "{Test dataloader: None}", "{Predict dataloader: None}"])


@both
def test_from_datasets_builds_lightnings_loaders(L):
    class Sized(L.LightningDataModule):
        def __init__(self, batch_size=None):
            super().__init__()
            self.given = batch_size

    data = Sized.from_datasets([TensorDataset(torch.zeros(4, 1)), Stream()], batch_size=2)
    mapped, stream = data.train_dataloader()
    assert mapped.pin_memory and stream.pin_memory and data.given == 2
    assert type(mapped.sampler).__name__ == "RandomSampler"  # training shuffles, but not an IterableDataset
    assert [batch.tolist() for batch in stream] == [[0, 1], [2]]
