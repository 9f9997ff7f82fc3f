"""An autoencoder whose encoder and decoder are passed to the LightningModule, as in Lightning's docs: they are left
out of the saved hyperparameters and passed again to `load_from_checkpoint`.

    python examples/loops/autoencoder.py                       # 1 CPU process
    python examples/loops/autoencoder.py --devices 2           # 2 processes (DDP)
    python examples/loops/autoencoder.py --max-epochs 1        # quicker

It compresses scikit-learn's 8x8 digits to `--code` numbers and back, then reloads the last checkpoint and prints
the reconstruction error of the reloaded model on the held-out images.
"""
from __future__ import annotations

import argparse

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import loops as L
from loops.callbacks import ModelCheckpoint


class AutoEncoder(L.LightningModule):
    def __init__(self, encoder: nn.Module, decoder: nn.Module, lr: float = 3e-3) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["encoder", "decoder"])
        self.encoder, self.decoder = encoder, decoder

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(images))

    def training_step(self, batch: tuple[torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = nn.functional.mse_loss(self(batch[0]), batch[0])
        self.log("train_loss", loss, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor], batch_idx: int) -> None:
        self.log("val_loss", nn.functional.mse_loss(self(batch[0]), batch[0]), sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def encoder_and_decoder(code: int) -> tuple[nn.Module, nn.Module]:
    return (nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, code)),
            nn.Sequential(nn.Linear(code, 32), nn.ReLU(), nn.Linear(32, 64), nn.Sigmoid()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-epochs", type=int, default=20)
    parser.add_argument("--devices", type=int, default=1, help="CPU processes (default 1)")
    parser.add_argument("--code", type=int, default=8, help="size of the compressed code (default 8)")
    parser.add_argument("--root", default="runs/autoencoder", help="logs and checkpoints (default %(default)s)")
    args = parser.parse_args()

    L.seed_everything(0)
    images = torch.tensor(load_digits().data, dtype=torch.float32) / 16.0
    train, held_out = TensorDataset(images[:1500]), TensorDataset(images[1500:])
    checkpoint = ModelCheckpoint(save_last=True)
    trainer = L.Trainer(accelerator="cpu", devices=args.devices, max_epochs=args.max_epochs,
                        default_root_dir=args.root, callbacks=[checkpoint], enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(AutoEncoder(*encoder_and_decoder(args.code)), DataLoader(train, batch_size=64, shuffle=True),
                DataLoader(held_out, batch_size=256))

    if trainer.is_global_zero:
        encoder, decoder = encoder_and_decoder(args.code)
        reloaded = AutoEncoder.load_from_checkpoint(checkpoint.last_model_path, encoder=encoder, decoder=decoder)
        reloaded.eval()
        with torch.no_grad():
            error = nn.functional.mse_loss(reloaded(held_out.tensors[0]), held_out.tensors[0]).item()
        print(f"reloaded {checkpoint.last_model_path}")
        print(f"held-out reconstruction error (MSE) of the reloaded model: {error:.4f} "
              f"(predicting the mean image: {held_out.tensors[0].var(dim=0).mean().item():.4f})")


if __name__ == "__main__":
    main()
