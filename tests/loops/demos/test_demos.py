"""`loops.demos`: Lightning's demo models and data. The datasets Lightning downloads read a local copy and otherwise
give synthetic data of the same shapes with a warning; nothing is downloaded."""
import pytest
import torch

import loops
from loops.demos import MNIST, BoringDataModule, BoringModel, DemoModel, MNISTDataModule, Transformer, WikiText2


def trainer(tmp_path, **kwargs):
    return loops.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, **kwargs)


def test_boring_model_fits_validates_and_tests(tmp_path):
    model = BoringModel()
    before = model.layer.weight.detach().clone()
    trainer(tmp_path, max_epochs=1, limit_train_batches=4, limit_val_batches=2).fit(model)
    assert not torch.equal(before, model.layer.weight)
    assert trainer(tmp_path, limit_test_batches=2).test(model, verbose=False) == [{}]


def test_boring_datamodule_splits_into_quarters(tmp_path):
    data = BoringDataModule()
    data.setup("fit")
    data.setup("test")
    assert len(data.random_train) == len(data.random_val) == len(data.random_test) == 64
    assert torch.equal(data.val_dataloader().dataset[0], data.random_full[64])
    trainer(tmp_path, max_steps=2, limit_val_batches=1).fit(DemoModel(), datamodule=data)


def test_wikitext2_without_the_file_is_synthetic_with_a_warning(tmp_path):
    state = torch.get_rng_state()
    with pytest.warns(UserWarning, match="WikiText2: .*wikitext-2.txt does not exist .*nothing is downloaded"):
        data = WikiText2(tmp_path)
    assert torch.equal(torch.get_rng_state(), state)  # its own generator: the program's seeding is untouched
    inputs, target = data[3]
    assert inputs.shape == target.shape == (35,) and torch.equal(inputs[1:], target[:-1])
    assert data.vocab_size == 33278 and len(data) == 2_088_628 // 35 - 1
    with pytest.warns(UserWarning, match="WikiText2"):
        assert torch.equal(WikiText2(tmp_path, download=False).data, data.data)  # the same synthetic tokens


def test_wikitext2_reads_a_local_copy(tmp_path):
    (tmp_path / "wikitext-2.txt").write_text("a b c\nb c d\n" * 20)
    data = WikiText2(tmp_path, block_size=4)
    assert data.vocab_size == 5 and data.dictionary[:2] == ["a", "b"]
    assert data[0][0].tolist() == [0, 1, 2, 3] and data[0][1].tolist() == [1, 2, 3, 1]


def test_transformer_gives_next_token_log_probabilities():
    model = Transformer(vocab_size=11, ninp=8, nhead=2, nhid=16, nlayers=1)
    inputs = torch.randint(11, (3, 5))
    out = model(inputs, inputs)
    assert out.shape == (15, 11) and torch.allclose(out.exp().sum(-1), torch.ones(15))


def test_mnist_reads_a_local_copy_and_normalises(tmp_path):
    folder = tmp_path / "MNIST" / "complete"
    folder.mkdir(parents=True)
    images = torch.randint(256, (6, 28, 28), dtype=torch.uint8)
    torch.save((images, torch.arange(6)), folder / "test.pt")
    data = MNIST(tmp_path, train=False, normalize=(0.0, 255.0))
    image, label = data[2]
    assert image.shape == (1, 28, 28) and label == 2 and torch.allclose(image[0], images[2].float() / 255)


def test_mnist_datamodule_without_the_files_is_synthetic(tmp_path):
    data = MNISTDataModule(str(tmp_path), num_workers=0, batch_size=8)
    with pytest.warns(UserWarning, match="MNIST: .*training.pt does not exist"):
        data.setup("fit")
    assert (len(data.dataset_train), len(data.dataset_val)) == (55_000, 5_000)
    images, labels = next(iter(data.train_dataloader()))
    assert images.shape == (8, 1, 28, 28) and 0 <= images.min() and images.max() <= 1 and labels.max() < 10
