"""`str(datamodule)`: Lightning's summary of the loaders each stage gets (the dataset sizes), compared with
Lightning 2.6's on the same datamodules."""
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
