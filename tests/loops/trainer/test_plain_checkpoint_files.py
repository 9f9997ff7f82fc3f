"""Every checkpoint the Trainer writes is a plain torch.save file: torch.load with its default arguments
(weights_only=True) reads it, so any PyTorch tool can take it."""
import torch

from loops.callbacks import ModelCheckpoint
from tests.helpers.loops import Regression, loader, make_trainer


def test_model_checkpoint_and_save_checkpoint_files_load_with_plain_torch_load(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=2, save_last=True)
    trainer = make_trainer(max_epochs=3, callbacks=[checkpoint])
    model = Regression()
    trainer.fit(model, loader(), loader(n=8))
    trainer.save_checkpoint(tmp_path / "manual.ckpt")
    trainer.save_checkpoint(tmp_path / "weights.ckpt", weights_only=True)
    files = sorted(tmp_path.glob("*.ckpt"))
    assert len(files) == 5  # top-2, last, and the two saved by hand
    for path in files:
        loaded = torch.load(path)
        assert loaded["global_step"] == trainer.global_step or path.name.startswith("epoch=")
        fresh = Regression()
        fresh.load_state_dict(loaded["state_dict"])
    manual = torch.load(tmp_path / "manual.ckpt")
    assert torch.equal(manual["state_dict"]["layer.weight"], model.layer.weight.detach())
