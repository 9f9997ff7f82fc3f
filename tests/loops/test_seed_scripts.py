"""Code as Lightning users write it (the patterns of the seed documents: a CIFAR-style DataModule with
prepare_data/setup(stage=None), save_hyperparameters, on_step+on_epoch logging, [opt], [sched], a custom callback,
fit(model, dm) then test(dataloaders=...), a module that owns its dataloaders), with only the import changed."""
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset, random_split

import loops as pl
from loops import Callback, LightningDataModule, LightningModule, Trainer


def fake_images(n, seed):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=generator)
    images = torch.randn(n, 1, 8, 8, generator=generator) * 0.1 + labels.view(-1, 1, 1, 1).float()
    return TensorDataset(images, labels)


class ImageDataModule(pl.LightningDataModule):
    def __init__(self, batch_size, data_dir: str = "./"):
        super().__init__()
        self.data_dir = data_dir
        self.batch_size = batch_size
        self.num_classes = 3

    def prepare_data(self):
        self.prepared = True

    def setup(self, stage=None):
        if stage == "fit" or stage is None:
            self.train_set, self.val_set = random_split(fake_images(96, 0), [80, 16],
                                                        generator=torch.Generator().manual_seed(0))
        if stage == "test" or stage is None:
            self.test_set = fake_images(32, 1)

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=self.batch_size)

    def test_dataloader(self):
        return DataLoader(self.test_set, batch_size=self.batch_size)


class PredictionLogger(pl.Callback):
    def __init__(self, val_samples, num_samples=8):
        super().__init__()
        self.num_samples = num_samples
        self.val_imgs, self.val_labels = val_samples
        self.accuracies = []

    def on_validation_epoch_end(self, trainer, pl_module):
        val_imgs = self.val_imgs.to(device=pl_module.device)
        preds = torch.argmax(pl_module(val_imgs), -1)
        self.accuracies.append((preds == self.val_labels.to(pl_module.device)).float().mean().item())


class LitModel(pl.LightningModule):
    def __init__(self, input_shape, num_classes, learning_rate=2e-2):
        super().__init__()
        self.save_hyperparameters()
        self.learning_rate = learning_rate
        self.conv1 = nn.Conv2d(input_shape[0], 8, 3, 1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(8 * 3 * 3, num_classes)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        return F.log_softmax(self.fc(x.view(x.size(0), -1)), dim=1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        loss = F.nll_loss(logits, y)
        acc = (torch.argmax(logits, dim=1) == y).float().mean()
        self.log("train_loss", loss, on_step=True, on_epoch=True, logger=True)
        self.log("train_acc", acc, on_step=True, on_epoch=True, logger=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.nll_loss(logits, y), prog_bar=True)
        self.log("val_acc", (torch.argmax(logits, dim=1) == y).float().mean(), prog_bar=True)

    def test_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("test_loss", F.nll_loss(logits, y), prog_bar=True)
        self.log("test_acc", (torch.argmax(logits, dim=1) == y).float().mean(), prog_bar=True)

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=self.learning_rate)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10)
        return [optimizer], [scheduler]


def test_datamodule_tutorial_flow(tmp_path):
    pl.seed_everything(0)
    dm = ImageDataModule(batch_size=16)
    dm.prepare_data()
    dm.setup()
    val_samples = next(iter(dm.val_dataloader()))
    model = LitModel((1, 8, 8), dm.num_classes)
    callback = PredictionLogger(val_samples)
    trainer = pl.Trainer(max_epochs=10, callbacks=[callback], default_root_dir=tmp_path, enable_progress_bar=False,
                         accelerator="cpu")
    trainer.fit(model, dm)
    assert {"train_loss_step", "train_loss_epoch", "train_acc", "val_loss"} <= set(trainer.callback_metrics)
    results = trainer.test(dataloaders=dm.test_dataloader(), verbose=False)
    assert results[0]["test_acc"] > 0.9 and callback.accuracies[-1] > 0.9
    assert model.hparams.num_classes == 3 and model.hparams.input_shape == (1, 8, 8)


class LitSimpleNN(LightningModule):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8 * 8, 32)
        self.fc2 = nn.Linear(32, 3)

    def prepare_data(self):
        self.data = fake_images(64, 2)

    def setup(self, stage=None):
        self.train_dataset, self.val_dataset = random_split(self.data, [48, 16])

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x.view(-1, 8 * 8))))

    def train_dataloader(self):
        return DataLoader(self.train_dataset, batch_size=16, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val_dataset, batch_size=16, shuffle=False)

    def training_step(self, batch, batch_idx):
        inputs, labels = batch
        loss = F.cross_entropy(self(inputs), labels)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        inputs, labels = batch
        outputs = self(inputs)
        self.log("val_loss", F.cross_entropy(outputs, labels), prog_bar=True)
        self.log("val_acc", (outputs.argmax(-1) == labels).float().mean(), prog_bar=True)
        return F.cross_entropy(outputs, labels)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.05)


def test_module_owns_its_data(tmp_path):
    torch.manual_seed(0)
    model = LitSimpleNN()
    trainer = Trainer(max_epochs=15, default_root_dir=tmp_path, enable_progress_bar=False, accelerator="cpu")
    trainer.fit(model)
    assert trainer.callback_metrics["val_loss"] < 0.5 and trainer.current_epoch == 15


def test_exported_names():
    assert pl.Trainer is Trainer and pl.Callback is Callback and pl.LightningDataModule is LightningDataModule


# -- the classifier seed: [AdamW], [CosineAnnealingLR], accumulation 4, clipping 1.0, three callbacks, then the
# best checkpoint reloaded and validated ---------------------------------------------------------------------------
class LitClassifier(pl.LightningModule):
    def __init__(self, hidden: int = 32, lr: float = 3e-2, max_epochs: int = 6):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 3))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y), prog_bar=True)
        self.log("val_acc", (logits.argmax(-1) == y).float().mean(), prog_bar=True)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.hparams.max_epochs)
        return [optimizer], [scheduler]


def test_classifier_seed_best_checkpoint_reproduces_its_score(tmp_path):
    from loops.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint

    pl.seed_everything(0)
    train = DataLoader(fake_images(256, 3), batch_size=8, shuffle=True)
    val = DataLoader(fake_images(64, 4), batch_size=16)
    checkpoint = ModelCheckpoint(monitor="val_loss", mode="min", save_top_k=2)
    lr_monitor = LearningRateMonitor(logging_interval="epoch")
    trainer = pl.Trainer(max_epochs=6, accumulate_grad_batches=4, gradient_clip_val=1.0, accelerator="cpu",
                         callbacks=[EarlyStopping(monitor="val_loss", patience=2), checkpoint, lr_monitor],
                         default_root_dir=tmp_path, enable_progress_bar=False)
    trainer.fit(LitClassifier(max_epochs=6), train, val)
    assert trainer.global_step == trainer.current_epoch * 32 // 4  # optimizer steps, not batches
    assert len(list(Path(checkpoint.dirpath).glob("*.ckpt"))) == 2  # top-2
    lrs = lr_monitor.lrs["lr-AdamW"]
    assert lrs[0] == pytest.approx(3e-2) and all(a > b for a, b in zip(lrs, lrs[1:], strict=False))  # cosine, per epoch
    best = LitClassifier.load_from_checkpoint(checkpoint.best_model_path)
    assert best.hparams.max_epochs == 6 and not best.training
    result = trainer.validate(best, val, verbose=False)
    assert result[0]["val_loss"] == pytest.approx(checkpoint.best_model_score.item(), abs=1e-6)
    assert result[0]["val_acc"] > 0.8


# -- the autoencoder seed: sub-modules passed to __init__ and again to load_from_checkpoint -----------------------
class LitAutoEncoder(pl.LightningModule):
    def __init__(self, encoder, decoder):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def training_step(self, batch, batch_idx):
        x = batch[0].view(batch[0].size(0), -1)
        x_hat = self.decoder(self.encoder(x))
        loss = F.mse_loss(x_hat, x)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def test_autoencoder_seed_reloads_with_its_modules(tmp_path):
    pl.seed_everything(0)
    encoder = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 3))
    decoder = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 64))
    autoencoder = LitAutoEncoder(encoder, decoder)
    trainer = pl.Trainer(max_epochs=2, limit_train_batches=10, default_root_dir=tmp_path, accelerator="cpu",
                         enable_progress_bar=False)
    trainer.fit(model=autoencoder, train_dataloaders=DataLoader(fake_images(96, 5), batch_size=8))
    checkpoint = trainer.checkpoint_callback.best_model_path
    assert Path(checkpoint).name == "epoch=1-step=20.ckpt"
    fresh_encoder = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 3))
    fresh_decoder = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 64))
    model = LitAutoEncoder.load_from_checkpoint(checkpoint, encoder=fresh_encoder, decoder=fresh_decoder)
    assert torch.equal(model.encoder[0].weight, autoencoder.encoder[0].weight)
    embeddings = model.encoder(torch.rand(4, 64))
    assert embeddings.shape == (4, 3)
